//! Choosing where to train: `cpu`, `cuda:N`, or `auto`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The device a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceSpec {
    /// burn's `Flex` CPU backend.
    Cpu,
    /// CUDA device N (requires the `cuda` feature and a driver).
    Cuda(usize),
    /// CUDA device 0 if one is usable, otherwise the CPU (with a log line saying why).
    #[default]
    Auto,
}

/// A device that has been checked and can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// The CPU.
    Cpu,
    /// A CUDA device that answered the probe.
    Cuda(usize),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| Error::Device(format!("unknown device {s:?}: expected cpu, cuda, cuda:N or auto"))),
        }
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> Self {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl DeviceSpec {
    /// Checks the device. `auto` never fails: without a usable GPU it logs why and picks the
    /// CPU. An explicit `cuda:N` fails with the reason instead.
    pub fn resolve(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => probe_cuda(n).map(|()| Device::Cuda(n)).map_err(Error::Device),
            Self::Auto => match probe_cuda(0) {
                Ok(()) => {
                    tracing::info!("using CUDA device 0");
                    Ok(Device::Cuda(0))
                }
                Err(why) => {
                    tracing::info!("no usable CUDA device ({why}); using the CPU");
                    Ok(Device::Cpu)
                }
            },
        }
    }
}

/// Checks, without touching burn, that CUDA device `index` can be used: the driver and NVRTC
/// libraries load, the driver initialises, the device exists, and the CUDA headers that
/// cubecl compiles kernels against are installed. burn panics on any of these.
#[cfg(feature = "cuda")]
pub fn probe_cuda(index: usize) -> std::result::Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: these only dlopen the libraries to see whether they exist; no symbol is called.
    let libs = unsafe { (cudarc::driver::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present()) };
    match libs {
        (false, _) => return Err("the CUDA driver library (libcuda) is not installed".into()),
        (_, false) => return Err("the NVRTC library (libnvrtc) is not installed".into()),
        _ => {}
    }
    let count = std::panic::catch_unwind(|| {
        cudarc::driver::result::init().map_err(|e| format!("the CUDA driver failed to initialise: {e:?}"))?;
        cudarc::driver::result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e:?}"))
    })
    .map_err(|_| "the CUDA driver panicked while initialising".to_string())??;
    if index >= count.max(0) as usize {
        return Err(format!("CUDA device {index} does not exist ({count} device(s) found)"));
    }
    let headers = std::env::var_os("CUDA_PATH").is_some()
        || ["/usr/local/cuda", "/opt/cuda", "/usr/bin/nvcc"].iter().any(|p| std::path::Path::new(p).exists());
    if !headers {
        return Err("no CUDA toolkit headers found (set CUDA_PATH or install /usr/local/cuda)".into());
    }
    Ok(())
}

/// Without the `cuda` feature no CUDA device can be used.
#[cfg(not(feature = "cuda"))]
pub fn probe_cuda(_index: usize) -> std::result::Result<(), String> {
    Err("kiln was built without the `cuda` feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        for (text, want) in [
            ("cpu", DeviceSpec::Cpu),
            ("CUDA:2", DeviceSpec::Cuda(2)),
            ("cuda", DeviceSpec::Cuda(0)),
            ("auto", DeviceSpec::Auto),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), want, "{text}");
        }
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
    }

    /// Built with `cuda` on a machine without an NVIDIA driver (like CI's): `auto` must pick the
    /// CPU, and an explicit `cuda:0` must say why it cannot be used, neither by panicking.
    #[cfg(feature = "cuda")]
    #[test]
    fn without_a_driver_auto_falls_back_and_cuda_explains() {
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            return; // a GPU machine: the GPU run of the quickstart covers this path
        }
        assert_eq!(DeviceSpec::Auto.resolve().unwrap(), Device::Cpu);
        let err = DeviceSpec::Cuda(0).resolve().unwrap_err().to_string();
        assert!(err.contains("libcuda") || err.contains("driver"), "{err}");
    }

    #[test]
    fn auto_never_fails_and_cpu_always_resolves() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), Device::Cpu);
        assert!(DeviceSpec::Auto.resolve().is_ok());
    }
}
