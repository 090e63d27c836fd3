//! The Slurm backend against stand-in commands, for the failures a real cluster will not
//! produce on demand: a transient `sbatch` error, a job that vanishes, a `squeue` that keeps
//! failing.

use std::path::Path;
use std::time::Duration;

use kiln_hpc::{Backend, Error, JobSpec, JobState, SlurmBackend, SlurmConfig};

use crate::{TempDir, write_script};

/// Stand-ins in `dir/bin`: `sbatch` fails once with "Socket timed out", then answers
/// `4242;testcluster`; `scontrol` knows the config but no job; `squeue` prints nothing, or fails
/// when `dir/squeue-fails` exists.
fn fake_slurm(dir: &Path) -> SlurmBackend {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let d = dir.display();
    write_script(
        &bin.join("sbatch"),
        &format!(
            "#!/bin/bash\ncat > /dev/null\nif [ ! -e {d}/sbatch-tried ]; then touch {d}/sbatch-tried\n\
             echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv operation' >&2; exit 1; fi\n\
             echo '4242;testcluster'\n"
        ),
    );
    write_script(
        &bin.join("scontrol"),
        "#!/bin/bash\nif [ \"$1\" = show ]; then printf 'MaxArraySize = 1001\\nAccountingStorageType = accounting_storage/none\\n'; exit 0; fi\n\
         echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n",
    );
    write_script(
        &bin.join("squeue"),
        &format!("#!/bin/bash\nif [ -e {d}/squeue-fails ]; then echo 'squeue: error: boom' >&2; exit 1; fi\n"),
    );
    SlurmBackend::new(SlurmConfig {
        bin_dir: Some(bin),
        poll_interval: Duration::from_millis(10),
        max_poll_interval: Duration::from_millis(20),
        retries: 2,
        retry_delay: Duration::from_millis(10),
        lost_after: 3,
    })
}

#[test]
fn transient_sbatch_error_is_retried_and_a_vanished_job_is_lost() {
    let dir = TempDir::new("fake-lost");
    let slurm = fake_slurm(dir.path());
    let sub = slurm.submit(&JobSpec::builder("ghost", ["true"]).build().unwrap()).unwrap();
    assert_eq!(sub.parts[0].job, 4242);
    assert_eq!(sub.parts[0].cluster.as_deref(), Some("testcluster"));
    assert_eq!(slurm.poll_stats().sbatch, 2, "one failure, one retry");
    let r = slurm.wait(&sub, Some(Duration::from_secs(20))).unwrap();
    assert_eq!(r[0].state, JobState::Lost, "{}", r[0]);
    assert!(r[0].reason.as_deref().unwrap_or("").contains("scontrol"), "{}", r[0]);
    let stats = slurm.poll_stats();
    assert_eq!(stats.squeue, stats.ticks);
    assert!(stats.ticks >= 3, "{stats:?}");
}

#[test]
fn waiters_give_up_when_every_poll_fails() {
    let dir = TempDir::new("fake-unreachable");
    let slurm = fake_slurm(dir.path());
    std::fs::write(dir.path().join("squeue-fails"), "").unwrap();
    let sub = slurm.submit(&JobSpec::builder("nowhere", ["true"]).build().unwrap()).unwrap();
    let err = slurm.wait(&sub, None).unwrap_err();
    assert!(matches!(err, Error::Unreachable { polls: 10.., .. }), "{err}");
    assert!(err.to_string().contains("boom"), "{err}");
}

#[test]
fn submissions_of_another_backend_are_refused() {
    let dir = TempDir::new("fake-wrong");
    let slurm = fake_slurm(dir.path());
    let local = kiln_hpc::LocalExecutor::new(dir.path().join("logs")).unwrap();
    let sub = local.submit(&JobSpec::builder("here", ["true"]).build().unwrap()).unwrap();
    assert!(matches!(slurm.wait(&sub, None), Err(Error::WrongBackend { .. })));
    assert!(matches!(slurm.cancel(&sub), Err(Error::WrongBackend { .. })));
}
