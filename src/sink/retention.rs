//! Version retention: after a successful run, old versions of the table (and of its run log)
//! are pruned with Lance's cleanup as `keep_versions` says, so overwrites and incremental runs
//! stop piling up data files. The current version always stays; so does every version inside
//! the window (a reader that opened one of them keeps working). Files no version references
//! but that may belong to a write in progress are left alone (Lance's own 7-day guard).

use super::runlog;
use super::table::connect;
use crate::resolve::{Retention, SinkSettings};
use anyhow::{Context, Result};
use lance::dataset::cleanup::{CleanupPolicyBuilder, RemovalStats};
use serde::Serialize;

/// What pruning removed.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Pruned {
    pub versions_removed: u64,
    pub bytes_removed: u64,
    pub files_removed: u64,
}

impl Pruned {
    fn add(&mut self, s: &RemovalStats) {
        self.versions_removed += s.old_versions;
        self.bytes_removed += s.bytes_removed;
        self.files_removed += s.data_files_removed
            + s.transaction_files_removed
            + s.index_files_removed
            + s.deletion_files_removed;
    }
}

/// Prunes the table of `settings` and its run log (when they exist) as `retention` says.
pub async fn prune(settings: &SinkSettings) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    if settings.retention == Retention::All {
        return Ok(pruned);
    }
    let target = &settings.target;
    let conn = connect(target).await?;
    let names = conn.table_names().execute().await?;
    for name in [target.table.clone(), runlog::table_name(target)] {
        if !names.contains(&name) {
            continue;
        }
        let table = conn.open_table(&name).execute().await?;
        let dataset = table
            .dataset()
            .context("pruning needs a local or object-store table")?
            .get()
            .await?;
        let builder = CleanupPolicyBuilder::default()
            .delete_unverified(false)
            .error_if_tagged_old_versions(false);
        let policy = match settings.retention {
            Retention::All => continue,
            Retention::Newest(n) => builder
                .retain_n_versions(&dataset, n.max(1) as usize)
                .await?
                .build(),
            Retention::Younger(window) => {
                let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
                let before = chrono::Utc::now()
                    .checked_sub_signed(window)
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
                builder.before_timestamp(before).build()
            }
        };
        let stats = dataset
            .cleanup_with_policy(policy)
            .await
            .with_context(|| format!("pruning old versions of `{name}`"))?;
        pruned.add(&stats);
    }
    Ok(pruned)
}
