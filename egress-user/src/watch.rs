//! Reload on a change of the policy file, as well as on SIGHUP.
//!
//! The parent directory is watched (inotify through `notify`), not the file: editors replace a
//! file by renaming a new one over it, and Kubernetes updates a mounted ConfigMap by swapping the
//! `..data` symlink, so the file's own inode never sees a write. Any event in the directory asks
//! for a check; the agent then re-reads the file and reloads only if its bytes differ from the
//! last ones it read, so unrelated files in the directory and duplicate events cost a read.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// Events closer together than this are one change (a symlink swap is several renames).
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// A running watch; dropping it stops watching.
pub struct PolicyWatch {
    _watcher: notify::RecommendedWatcher,
    rx: mpsc::Receiver<()>,
}

impl PolicyWatch {
    pub fn new(policy: &Path) -> anyhow::Result<Self> {
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
        .context("cannot start watching the policy file")?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {} for policy changes", dir.display()))?;
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
