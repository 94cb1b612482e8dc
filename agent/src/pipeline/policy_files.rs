//! When changed policy files are read: only once they have stopped changing. A file written
//! in place (`open` with `O_TRUNC`, then `write`) is empty, or holds a prefix of its new text,
//! until the writer is done; applied at that moment, it would lift policies until the next
//! look. So a change is read only after its fingerprint held for a whole quiet period of wall
//! time (not a number of ticks: a late timer fires its missed ticks back to back), the
//! fingerprint must be the same after the read as before it, and a policy file that is
//! empty is taken as still being written and never applied (to lift every policy of a file,
//! leave a comment in it, or remove it from a watched directory).
use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use crate::policy::{self, FieldError, Policy};

/// What identifies the policy files' content: every file's path, size and modification time.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut out = Vec::new();
    for path in paths {
        let mut files = vec![path.clone()];
        if path.is_dir() {
            files = std::fs::read_dir(path)
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
        }
        for file in files {
            let meta = std::fs::metadata(&file).ok();
            out.push((
                file,
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out.sort();
    out
}

/// What one look at the policy files found.
#[derive(Debug)]
pub(crate) enum Look {
    /// Nothing changed since the files were last read.
    Unchanged,
    /// Changed, and not yet quiet for long enough to be read.
    Settling,
    /// Quiet, but these policy files are empty: taken as still being written.
    Empty(Vec<PathBuf>),
    /// Read: the policies, or every problem found in them.
    Read(Result<Vec<Policy>, Vec<FieldError>>),
}

pub(crate) struct PolicyFiles {
    paths: Vec<PathBuf>,
    quiet: Duration,
    /// The fingerprint last seen, and since when it has held.
    seen: (Fingerprint, Instant),
    /// The fingerprint of what was last read (or found empty).
    decided: Fingerprint,
}

impl PolicyFiles {
    /// Watches `paths`, whose current content the agent has already read at start.
    pub(crate) fn new(paths: Vec<PathBuf>, quiet: Duration, now: Instant) -> Self {
        let current = fingerprint(&paths);
        Self {
            paths,
            quiet,
            seen: (current.clone(), now),
            decided: current,
        }
    }

    pub(crate) fn look(&mut self, now: Instant) -> Look {
        self.look_with(now, policy::load_paths)
    }

    /// [`Self::look`] with the reading done by `read`.
    fn look_with(
        &mut self,
        now: Instant,
        read: impl FnOnce(&[PathBuf]) -> Result<Vec<Policy>, Vec<FieldError>>,
    ) -> Look {
        let current = fingerprint(&self.paths);
        if current != self.seen.0 {
            self.seen = (current, now);
            return Look::Settling;
        }
        if current == self.decided {
            return Look::Unchanged;
        }
        if now.duration_since(self.seen.1) < self.quiet {
            return Look::Settling;
        }
        let files = policy::files_under(&self.paths);
        let empty: Vec<PathBuf> = files
            .into_iter()
            .filter(|f| std::fs::metadata(f).is_ok_and(|m| m.len() == 0))
            .collect();
        if !empty.is_empty() {
            self.decided = current;
            return Look::Empty(empty);
        }
        let read = read(&self.paths);
        let after = fingerprint(&self.paths);
        if after != current {
            // Written while being read: what was read may be half of it.
            self.seen = (after, now);
            return Look::Settling;
        }
        self.decided = current;
        Look::Read(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: vigil.dev/v1alpha1\nkind: ClusterRuntimePolicy\nmetadata: {name: p}\nspec:\n  hostProcesses: {}\n  exec:\n    deny: [{prefix: /tmp/}]\n    action: Kill\n";
    const QUIET: Duration = Duration::from_millis(500);

    fn names(look: Look) -> Vec<String> {
        match look {
            Look::Read(Ok(policies)) => policies.into_iter().map(|p| p.name).collect(),
            other => panic!("expected policies read, got {other:?}"),
        }
    }

    #[test]
    fn a_change_is_read_only_after_a_quiet_period_of_wall_time() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "# none yet\n").unwrap();
        let t0 = Instant::now();
        let mut files = PolicyFiles::new(vec![file.clone()], QUIET, t0);
        assert!(matches!(files.look(t0), Look::Unchanged));
        std::fs::write(&file, POLICY).unwrap();
        assert!(matches!(files.look(t0), Look::Settling));
        // Many looks in a burst (a timer catching up) are still not a quiet period.
        for _ in 0..5 {
            assert!(matches!(files.look(t0 + QUIET / 2), Look::Settling));
        }
        assert_eq!(names(files.look(t0 + QUIET)), ["p"]);
        assert!(matches!(files.look(t0 + QUIET * 3), Look::Unchanged));
    }

    #[test]
    fn an_emptied_file_is_taken_as_being_written_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, POLICY).unwrap();
        let t0 = Instant::now();
        let mut files = PolicyFiles::new(vec![dir.path().to_path_buf()], QUIET, t0);
        // What `O_TRUNC` leaves until the writer's `write` comes, however late it comes.
        std::fs::File::create(&file).unwrap();
        assert!(matches!(files.look(t0), Look::Settling));
        match files.look(t0 + QUIET * 10) {
            Look::Empty(empty) => assert_eq!(empty, std::slice::from_ref(&file)),
            other => panic!("expected the empty file named, got {other:?}"),
        }
        assert!(matches!(files.look(t0 + QUIET * 20), Look::Unchanged));
        // The benign twin: a file that only has a comment lifts its policies.
        std::fs::write(&file, "# lifted\n").unwrap();
        let t1 = t0 + QUIET * 30;
        assert!(matches!(files.look(t1), Look::Settling));
        assert!(names(files.look(t1 + QUIET)).is_empty());
    }

    #[test]
    fn a_file_written_while_it_was_read_is_read_again_once_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.yaml");
        std::fs::write(&file, "# none yet\n").unwrap();
        let t0 = Instant::now();
        let mut files = PolicyFiles::new(vec![file.clone()], QUIET, t0);
        std::fs::write(&file, POLICY.replace("action: Kill\n", "")).unwrap();
        assert!(matches!(files.look(t0), Look::Settling));
        let look = files.look_with(t0 + QUIET, |paths| {
            let read = policy::load_paths(paths);
            // The writer's next version lands between the read and the second look.
            std::fs::write(&file, POLICY).unwrap();
            read
        });
        assert!(matches!(look, Look::Settling), "{look:?}");
        assert!(matches!(files.look(t0 + QUIET), Look::Settling));
        let t1 = t0 + QUIET * 2;
        match files.look(t1) {
            Look::Read(Ok(policies)) => assert_eq!(
                policies[0].spec.exec.action,
                policy::Action::Kill,
                "the later version"
            ),
            other => panic!("expected policies read, got {other:?}"),
        }
    }
}
