//! What every service of this process shares about one SQLite database file, so two
//! `connect()`s to the same file see each other's stages: SQLite has no row locks, so "another
//! stage is working this key" is known here, in-process.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex, OnceLock, Weak};

/// What every service of this process shares about one SQLite database file, so two
/// `connect()`s to the same file see each other's stages.
pub(crate) struct FileState {
  /// Keys whose stage is running: SQLite's stand-in for a held row lock.
  pub(crate) working: StdMutex<HashSet<String>>,
  /// Stages queue here for the single write lock instead of polling SQLite's busy handler.
  pub(crate) writer: tokio::sync::Mutex<()>,
}

impl FileState {
  /// The state of `path` (a fresh one for an in-memory database, which nobody else sees).
  pub(crate) fn for_path(path: Option<PathBuf>) -> Arc<Self> {
    let fresh = || {
      Arc::new(FileState {
        working: StdMutex::new(HashSet::new()),
        writer: tokio::sync::Mutex::new(()),
      })
    };
    let Some(path) = path else { return fresh() };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    static FILES: OnceLock<StdMutex<HashMap<PathBuf, Weak<FileState>>>> = OnceLock::new();
    let mut files = FILES.get_or_init(Default::default).lock().unwrap();
    files.retain(|_, state| state.strong_count() > 0);
    if let Some(state) = files.get(&path).and_then(Weak::upgrade) {
      return state;
    }
    let state = fresh();
    files.insert(path, Arc::downgrade(&state));
    state
  }
}

/// A key's place in the working set, taken when its stage begins and given back when the
/// stage's transaction ends, however it ends.
pub(crate) struct Working(Arc<FileState>, String);

impl Working {
  /// Take `key` for a stage; `None` when a stage of this process is working it already.
  pub(crate) fn take(file: &Arc<FileState>, key: &str) -> Option<Self> {
    let fresh = file.working.lock().unwrap().insert(key.to_owned());
    fresh.then(|| Working(file.clone(), key.to_owned()))
  }
}

impl Drop for Working {
  fn drop(&mut self) {
    self.0.working.lock().unwrap().remove(&self.1);
  }
}
