//! A fault plan: a seed and the faults to apply at each IO seam, read from TOML.
//!
//! ```toml
//! seed = 42
//! [stream]            # below TLS, on every accepted TCP/TLS connection
//! max_write = 3
//! stall_after = 65536
//! stall_for = "5s"
//! [udp]               # below quinn, on the QUIC endpoint's sends
//! loss = 0.05
//! delay = "20ms"
//! ```

use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use super::stream::StreamFaults;
use super::udp::UdpFaults;

/// Faults for every seam; all off by default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub stream: StreamFaults,
    #[serde(default)]
    pub udp: UdpFaults,
}

/// A plan that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("fault plan {path}: {detail}")]
pub struct FaultPlanError {
    pub path: PathBuf,
    pub detail: String,
}

impl FaultPlan {
    pub fn load(path: &Path) -> Result<FaultPlan, FaultPlanError> {
        if !path.is_file() {
            return Err(FaultPlanError {
                path: path.to_path_buf(),
                detail: "no such file".to_string(),
            });
        }
        Figment::from(Toml::file(path))
            .extract()
            .map_err(|e| FaultPlanError {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
    }

    pub fn is_empty(&self) -> bool {
        self.stream.is_empty() && self.udp == UdpFaults::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_from_toml_and_names_bad_keys() {
        let dir = std::env::temp_dir().join(format!("twinmq-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "seed = 7\n[stream]\nmax_write = 3\nstall_for = \"2s\"\n[udp]\nloss = 0.1\n",
        )
        .expect("write");
        let plan = FaultPlan::load(&good).expect("loads");
        assert_eq!(plan.seed, 7);
        assert_eq!(plan.stream.max_write, Some(3));
        assert_eq!(
            plan.stream.stall_for,
            Some(std::time::Duration::from_secs(2))
        );
        assert!((plan.udp.loss - 0.1).abs() < f64::EPSILON);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[stream]\nmax_wirte = 3\n").expect("write");
        let err = FaultPlan::load(&bad).expect_err("typo").to_string();
        assert!(
            err.contains("max_wirte") && err.contains("bad.toml"),
            "{err}"
        );
        // The broker cannot build a namespace link for itself (the stability bench does):
        // a [link] table would be silently ignored, so it is refused by name.
        let link = dir.join("link.toml");
        std::fs::write(&link, "[link]\nloss = 0.1\n").expect("write");
        let err = FaultPlan::load(&link)
            .expect_err("no link here")
            .to_string();
        assert!(err.contains("link") && err.contains("link.toml"), "{err}");
    }
}
