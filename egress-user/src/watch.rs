//! Reload on a change of the policy file, as well as on SIGHUP.
//!
//! The parent directory is watched (inotify through `notify`), not the file: editors replace a
//! file by renaming a new one over it, and Kubernetes updates a mounted ConfigMap by swapping the
//! `..data` symlink, so the file's own inode never sees a write. Any event in the directory asks
//! for a check; the agent then re-reads the file and reloads only if its bytes differ from the
//! last ones it read, so unrelated files in the directory and duplicate events cost a read.

use std::path::{Path, PathBuf};

use notify::{RecursiveMode, Watcher as _};
use thiserror::Error;
use tokio::sync::mpsc;

/// Events closer together than this are one change (a symlink swap is several renames).
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

#[derive(Debug, Error)]
pub enum WatchError {
    #[error("cannot start watching the policy file {policy}")]
    Start {
        policy: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error("cannot watch {dir} for policy changes")]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running watch; dropping it stops watching.
pub struct PolicyWatch {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
}

impl PolicyWatch {
    pub fn new(policy: &Path) -> Result<Self, WatchError> {
        let dir: PathBuf = match policy.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        // Capacity 1 and `try_send`: a burst of events while a check is pending is one check.
        let (tx, rx) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.try_send(());
            }
        })
        .map_err(|source| WatchError::Start {
            policy: policy.to_owned(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch { dir, source })?;
        Ok(Self {
            _watcher: watcher,
            rx,
        })
    }

    /// Waits for a change, then for the directory to settle.
    pub async fn changed(&mut self) {
        if self.rx.recv().await.is_none() {
            // The watcher is gone: never fire again.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SETTLE).await;
        while self.rx.try_recv().is_ok() {}
    }
}
