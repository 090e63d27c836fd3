//! Plots written as real PNG and SVG files, checked by reading the files back.

use kiln_train::plot::{Series, calibration_curve, confusion_matrix, drift_histogram, line_chart, residual_plot};
use kiln_train::{Error, calibration_bins, expected_calibration_error};
use ndarray::array;

fn png_size(path: &std::path::Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

#[test]
fn every_plot_writes_png_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let loss = Series::new("val_loss", (1..=20).map(|e| (e as f64, 1.0 / e as f64)).collect());
    let acc = Series::new("val_accuracy", vec![(1.0, 0.5), (2.0, f64::NAN), (3.0, 0.9)]);
    let labels: Vec<String> = ["cat", "dog", "emu"].map(String::from).to_vec();
    let confusion = vec![vec![5, 1, 0], vec![0, 7, 2], vec![1, 0, 9]];
    let truth = [0, 1, 2, 1, 0, 2];
    let p =
        array![[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]];
    let bins = calibration_bins(&truth, p.view(), 10).unwrap();
    let reference: Vec<f64> = (0..500).map(|i| (i % 50) as f64).collect();
    let current: Vec<f64> = (0..300).map(|i| (i % 50) as f64 + 10.0).collect();
    let grams: Vec<f64> = (0..80).map(|i| 3000.0 + 40.0 * i as f64).collect();
    let predicted: Vec<f64> = grams.iter().enumerate().map(|(i, g)| g + 150.0 * ((i % 7) as f64 - 3.0)).collect();
    for ext in ["png", "svg"] {
        let path = |name: &str| dir.path().join(format!("{name}.{ext}"));
        line_chart(&[loss.clone(), acc.clone()], "curves", "epoch", "value", false, &path("curves")).unwrap();
        line_chart(std::slice::from_ref(&loss), "log", "epoch", "loss", true, &path("log")).unwrap();
        confusion_matrix(&confusion, &labels, "confusion", &path("confusion")).unwrap();
        calibration_curve(&bins, "reliability", &path("calibration")).unwrap();
        drift_histogram(&reference, &current, 20, "drift", "bill_length_mm", &path("drift")).unwrap();
        residual_plot(&grams, &predicted, "residuals", "g", &path("residuals")).unwrap();
        for name in ["curves", "log", "confusion", "calibration", "drift", "residuals"] {
            if ext == "png" {
                assert_eq!(png_size(&path(name)), (960, 600), "{name}");
            } else {
                let svg = std::fs::read_to_string(path(name)).unwrap();
                assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{name}");
            }
        }
    }
    let svg = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}.svg"))).unwrap();
    assert!(svg("curves").contains("val_loss") && svg("curves").contains("val_accuracy"));
    assert!(svg("confusion").contains("emu") && svg("confusion").contains(">\n9\n</text>"), "counts in the cells");
    assert!(svg("drift").contains("reference (500 rows)") && svg("drift").contains("current (300 rows)"));
    assert!(svg("residuals").contains("80 rows") && svg("residuals").contains("true − predicted (g)"));
    // Perfect predictions still draw (a zero-height range would break the axis).
    residual_plot(&grams, &grams, "exact", "", &dir.path().join("exact.png")).unwrap();
    let err = residual_plot(&grams, &grams[1..], "bad", "g", &dir.path().join("bad.svg")).unwrap_err().to_string();
    assert!(err.contains("80 true values for 79 predictions"), "{err}");
    // No temporary files are left next to the plots.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str().map(String::from))
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn calibration_bins_add_up_to_the_ece() {
    let truth = [0, 1, 2, 1, 0, 2];
    let p =
        array![[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]];
    let bins = calibration_bins(&truth, p.view(), 10).unwrap();
    assert_eq!(bins.len(), 10);
    assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 6);
    // (0.8, 0.9] holds row 0 alone (0.9, right); row 5 (0.8) is in (0.7, 0.8].
    let b = &bins[8];
    assert_eq!((b.count, b.accuracy, b.confidence), (1, 1.0, 0.9));
    let ece: f64 = bins.iter().map(|b| b.count as f64 / 6.0 * (b.accuracy - b.confidence).abs()).sum();
    assert!((ece - expected_calibration_error(&truth, p.view(), 10).unwrap()).abs() < 1e-12);
}

#[test]
fn bad_plot_requests_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let gif = dir.path().join("x.gif");
    let err = line_chart(&[Series::new("a", vec![(0.0, 1.0)])], "t", "x", "y", false, &gif).unwrap_err();
    assert!(matches!(&err, Error::Plot { path, .. } if *path == gif), "{err}");
    let svg = dir.path().join("x.svg");
    let err = line_chart(&[Series::new("a", vec![(0.0, f64::NAN)])], "t", "x", "y", false, &svg).unwrap_err();
    assert!(err.to_string().contains("no finite points"), "{err}");
    let err = confusion_matrix(&[vec![1, 2]], &["a".into(), "b".into()], "t", &svg).unwrap_err();
    assert!(err.to_string().contains("2 x 2"), "{err}");
    assert!(!svg.exists());
}
