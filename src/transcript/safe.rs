//! Files the agent can write: the CLI's transcripts under a tenant's configuration folder
//! (`CLAUDE_CONFIG_DIR/projects/<slug>/<id>.jsonl`, and the session's folder beside it).
//!
//! The agent (sandboxed or not) can write everything below that folder, so the server never
//! follows what it finds there. Every path is opened from the configuration folder (the root,
//! which the operator names and the agent cannot replace: it is the sandbox's bind mount) one
//! component at a time, through `cap-std`: each folder below the root with `O_NOFOLLOW |
//! O_DIRECTORY`, the file with `O_NOFOLLOW | O_NONBLOCK` after an `lstat` (so a FIFO or device is
//! never opened), then checked again on the open handle (`fstat`): a regular file with one link.
//! A symbolic link, a FIFO, a device, a socket, a folder where a file belongs (or a file where a
//! folder belongs) or a file with several hard links is refused with `TRANSCRIPT_UNSAFE`; a
//! missing component is a missing file. Writes go through a temporary file created with
//! `O_EXCL | O_NOFOLLOW` in the same (checked) folder and renamed over the name (a rename
//! replaces a planted link, it does not write through it); removals unlink the entry itself and
//! remove a folder without following links inside it.
//!
//! Reads are streamed ([`BoundedLines`]): a line longer than [`DEFAULT_MAX_LINE_BYTES`] is skipped
//! (counted as malformed) without being held, and a read that passes the transcript bound fails
//! with `TRANSCRIPT_TOO_LARGE`.

use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::{Component, Path, PathBuf};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, Metadata, OpenOptions};

use crate::error::{Error, ErrorCode, Result};

/// A transcript line longer than this is skipped (counted as malformed), never held.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 << 20;

/// The default bound on a transcript read whole (`maxTranscriptBytes`).
pub const DEFAULT_MAX_TRANSCRIPT_BYTES: u64 = 256 << 20;

/// A file below a tenant's configuration folder: `root` (followed as configured) and `rel`, plain
/// names below it (never followed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantFile {
  root: PathBuf,
  rel: PathBuf,
}

impl TenantFile {
  /// `rel` must be plain names (no `..`, `.`, root or prefix): anything else is refused when the
  /// file is used.
  pub fn new(root: impl Into<PathBuf>, rel: impl Into<PathBuf>) -> Self {
    TenantFile { root: root.into(), rel: rel.into() }
  }

  /// A file given by a full path, with its folder as the root (only the file name is checked).
  pub fn in_folder(path: &Path) -> Self {
    let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
    TenantFile { root, rel: path.file_name().map(PathBuf::from).unwrap_or_default() }
  }

  pub fn root(&self) -> &Path {
    &self.root
  }

  pub fn rel(&self) -> &Path {
    &self.rel
  }

  /// The full path, for messages (and for the CLI, which is given the folder).
  pub fn path(&self) -> PathBuf {
    self.root.join(&self.rel)
  }

  /// Another file of the same tree: `rel` relative to this file's folder.
  pub fn sibling(&self, rel: impl AsRef<Path>) -> TenantFile {
    let folder = self.rel.parent().map(Path::to_path_buf).unwrap_or_default();
    TenantFile { root: self.root.clone(), rel: folder.join(rel) }
  }

  /// A file below this one's name (the session's folder): `rel` joined to this file's path.
  pub fn join(&self, rel: impl AsRef<Path>) -> TenantFile {
    TenantFile { root: self.root.clone(), rel: self.rel.join(rel) }
  }

  /// The same name without its extension (the session's folder beside `<id>.jsonl`).
  pub fn with_extension(&self, ext: &str) -> TenantFile {
    TenantFile { root: self.root.clone(), rel: self.rel.with_extension(ext) }
  }

  fn names(&self) -> Result<Vec<&OsStr>> {
    let mut v = vec![];
    for c in self.rel.components() {
      match c {
        Component::Normal(n) => v.push(n),
        _ => return Err(self.refused(&format!("{} is not a plain relative name", self.rel.display()))),
      }
    }
    if v.is_empty() {
      return Err(Error::internal("a tenant file without a name"));
    }
    Ok(v)
  }

  fn refused(&self, why: &str) -> Error {
    Error::new(
      ErrorCode::TranscriptUnsafe,
      format!(
        "refusing {}: {why}; the agent can write below {}, so the server does not follow links or open special files there",
        self.path().display(),
        self.root.display()
      ),
    )
  }

  fn io(&self, what: &str, e: io::Error) -> Error {
    Error::store(format!("cannot {what} transcript {}: {e}", self.path().display()))
  }

  /// Why an entry that could not be opened as wanted is not what it should be, or the error.
  fn explain(&self, dir: &Dir, name: &OsStr, want_dir: bool, e: io::Error) -> Error {
    match dir.symlink_metadata(name) {
      Ok(m) if m.file_type().is_symlink() => self.refused(&format!("{} is a symbolic link", name.to_string_lossy())),
      Ok(m) if want_dir && !m.is_dir() => self.refused(&format!("{} is not a folder", name.to_string_lossy())),
      Ok(m) if !want_dir && !m.is_file() => self.refused(&format!("{} is not a regular file", name.to_string_lossy())),
      _ => self.io("open", e),
    }
  }

  /// The folder holding the file (opened without following anything below the root) and the
  /// file's name; `None` when a folder on the way does not exist and `create` is false.
  fn walk(&self, create: bool) -> Result<Option<(Dir, OsString)>> {
    let names = self.names()?;
    let (name, folders) = names.split_last().ok_or_else(|| Error::internal("a tenant file without a name"))?;
    if create {
      std::fs::create_dir_all(&self.root).map_err(|e| self.io("create the folder of", e))?;
    }
    let mut dir = match Dir::open_ambient_dir(&self.root, cap_std::ambient_authority()) {
      Ok(d) => d,
      Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
      Err(e) => return Err(self.io("open the folder of", e)),
    };
    for f in folders {
      let next = match dir.open_dir_nofollow(f) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.symlink_metadata(f).is_err() => {
          if !create {
            return Ok(None);
          }
          let mut b = cap_std::fs::DirBuilder::new();
          #[cfg(unix)]
          cap_std::fs::DirBuilderExt::mode(&mut b, 0o700);
          match dir.create_dir_with(f, &b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(self.io("create a folder for", e)),
          }
          dir.open_dir_nofollow(f).map_err(|e| self.explain(&dir, f, true, e))?
        }
        Err(e) => return Err(self.explain(&dir, f, true, e)),
      };
      dir = next;
    }
    Ok(Some((dir, name.to_os_string())))
  }

  fn check_regular(&self, m: &Metadata) -> Result<()> {
    let name = self.rel.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if m.file_type().is_symlink() {
      return Err(self.refused(&format!("{name} is a symbolic link")));
    }
    if !m.is_file() {
      return Err(self.refused(&format!("{name} is not a regular file")));
    }
    #[cfg(unix)]
    {
      use cap_std::fs::MetadataExt;
      if m.nlink() > 1 {
        return Err(self.refused(&format!("{name} has {} hard links", m.nlink())));
      }
    }
    Ok(())
  }

  /// The file's length, `None` when it does not exist; refused when it is not a regular file.
  pub fn regular_len(&self) -> Result<Option<u64>> {
    let Some((dir, name)) = self.walk(false)? else { return Ok(None) };
    match dir.symlink_metadata(&name) {
      Ok(m) => self.check_regular(&m).map(|()| Some(m.len())),
      Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
      Err(e) => Err(self.io("read", e)),
    }
  }

  /// Opens the file for reading, with its length; `None` when it does not exist. Refused when it
  /// (or a folder on the way) is a link or not what it should be.
  pub fn open_read(&self) -> Result<Option<(std::fs::File, u64)>> {
    self.open_regular(false)
  }

  /// Opens the file (for writing when `write`) with its length, as [`Self::open_read`] does.
  fn open_regular(&self, write: bool) -> Result<Option<(std::fs::File, u64)>> {
    let what = if write { "write" } else { "read" };
    let Some((dir, name)) = self.walk(false)? else { return Ok(None) };
    // lstat first: a FIFO or a device is never opened (opening one can block or act).
    match dir.symlink_metadata(&name) {
      Ok(m) => self.check_regular(&m)?,
      Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
      Err(e) => return Err(self.io(what, e)),
    }
    let mut o = OpenOptions::new();
    o.read(true).write(write).follow(FollowSymlinks::No);
    #[cfg(unix)]
    cap_std::fs::OpenOptionsExt::custom_flags(&mut o, libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = match dir.open_with(&name, &o) {
      Ok(f) => f,
      Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
      Err(e) => return Err(self.explain(&dir, &name, false, e)),
    };
    // What was opened, not what was there a moment before.
    let m = file.metadata().map_err(|e| self.io(what, e))?;
    self.check_regular(&m)?;
    Ok(Some((file.into_std(), m.len())))
  }

  /// The names of the entries of this folder (not `.` and `..`; names that are not UTF-8 left
  /// out), whatever they are: the caller opens each through [`TenantFile`]. Empty when the folder
  /// (or one on its way) does not exist; refused when one is a link or not a folder.
  pub fn list(&self) -> Result<Vec<String>> {
    let Some((dir, name)) = self.walk(false)? else { return Ok(vec![]) };
    let folder = match dir.open_dir_nofollow(&name) {
      Ok(d) => d,
      Err(e) if e.kind() == io::ErrorKind::NotFound && dir.symlink_metadata(&name).is_err() => return Ok(vec![]),
      Err(e) => return Err(self.explain(&dir, &name, true, e)),
    };
    let mut names = vec![];
    for entry in folder.entries().map_err(|e| self.io("list", e))? {
      let entry = entry.map_err(|e| self.io("list", e))?;
      if let Ok(n) = entry.file_name().into_string() {
        names.push(n);
      }
    }
    names.sort();
    Ok(names)
  }

  /// The whole file, when it is a regular file of at most `max` bytes: `None` when it does not
  /// exist, `TRANSCRIPT_TOO_LARGE` when it is larger (nothing more than `max + 1` bytes is read,
  /// whatever its length said).
  pub fn read_bounded(&self, max: u64) -> Result<Option<Vec<u8>>> {
    use std::io::Read;
    let Some((f, len)) = self.open_read()? else { return Ok(None) };
    if len > max {
      return Err(too_large(&self.path().display().to_string(), max));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| self.io("read", e))?;
    if buf.len() as u64 > max {
      return Err(too_large(&self.path().display().to_string(), max));
    }
    Ok(Some(buf))
  }

  /// Replaces the file with what `fill` writes, through a temporary file in the same folder
  /// (readers never see half a file), `0600`; missing folders are created `0700`.
  pub fn write_atomic(&self, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let (dir, name) = self.walk(true)?.ok_or_else(|| Error::internal("a created folder is missing"))?;
    if let Ok(m) = dir.symlink_metadata(&name) {
      if m.is_dir() {
        return Err(self.refused(&format!("{} is a folder", name.to_string_lossy())));
      }
    }
    let tmp = format!(".{}.csm-{}", name.to_string_lossy(), uuid::Uuid::new_v4());
    let write = || -> io::Result<()> {
      let mut o = OpenOptions::new();
      o.write(true).create_new(true).follow(FollowSymlinks::No);
      #[cfg(unix)]
      cap_std::fs::OpenOptionsExt::mode(&mut o, 0o600);
      let mut w = BufWriter::new(dir.open_with(&tmp, &o)?);
      fill(&mut w)?;
      let f = w.into_inner().map_err(|e| e.into_error())?;
      f.sync_all()?;
      // Renaming over a planted link replaces the link; nothing is written through it.
      dir.rename(&tmp, &dir, &name)
    };
    write().map_err(|e| {
      let _ = dir.remove_file(&tmp);
      self.io("write", e)
    })
  }

  /// Cuts the file back to its first `len` bytes, in place (the same file, for a process that
  /// appends to it by name), once `check` accepts what follows them (at most `max` bytes): all
  /// on one open handle, whose length must not change meanwhile. `Ok(false)`, nothing cut, when
  /// the file does not exist, is shorter than `len`, longer than `len + max`, or `len` is not at
  /// a line's end. Refused when it (or a folder on the way) is a link or not a regular file.
  pub fn cut_checked(&self, len: u64, max: u64, check: impl FnOnce(&[u8]) -> Result<()>) -> Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let Some((mut file, now)) = self.open_regular(true)? else { return Ok(false) };
    if now < len || now - len > max {
      return Ok(false);
    }
    let mut tail = Vec::with_capacity((now - len + 1) as usize);
    file
      .seek(SeekFrom::Start(len.saturating_sub(1)))
      .and_then(|_| (&mut file).take(max + 1).read_to_end(&mut tail))
      .map_err(|e| self.io("read", e))?;
    let written = match len {
      0 => &tail[..],
      _ if tail.first() == Some(&b'\n') => &tail[1..],
      _ => return Ok(false),
    };
    check(written)?;
    if file.metadata().map_err(|e| self.io("read", e))?.len() != now {
      return Ok(false);
    }
    file.set_len(len).map_err(|e| self.io("write", e))?;
    Ok(true)
  }

  /// Removes the file, or whatever entry has its name (a link is removed, not followed); nothing
  /// when a folder on the way is missing. A link on the way is refused.
  pub fn remove(&self) -> Result<()> {
    let Some((dir, name)) = self.walk(false)? else { return Ok(()) };
    match dir.remove_file_or_symlink(&name) {
      Ok(()) => Ok(()),
      Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
      Err(e) => Err(self.io("remove", e)),
    }
  }

  /// Removes the folder with this name and everything in it, following no link (a link in its
  /// place, or inside it, is removed itself).
  pub fn remove_tree(&self) -> Result<()> {
    let Some((dir, name)) = self.walk(false)? else { return Ok(()) };
    match dir.remove_dir_all(&name) {
      Ok(()) => Ok(()),
      Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
      Err(e) => Err(self.io("remove", e)),
    }
  }
}

/// Why a bounded read stopped.
#[derive(Debug)]
pub enum LineError {
  Io(io::Error),
  /// More than the bound was read.
  TooLarge,
}

impl From<io::Error> for LineError {
  fn from(e: io::Error) -> Self {
    LineError::Io(e)
  }
}

/// The lines of a reader, read in chunks: a line longer than `max_line` is skipped without being
/// held (counted in `skipped`), and reading past `max_total` bytes fails with
/// [`LineError::TooLarge`].
pub struct BoundedLines<R> {
  reader: R,
  max_line: usize,
  max_total: u64,
  read: u64,
  /// Lines skipped for their length.
  pub skipped: usize,
}

impl<R: BufRead> BoundedLines<R> {
  pub fn new(reader: R, max_line: usize, max_total: u64) -> Self {
    BoundedLines { reader, max_line, max_total, read: 0, skipped: 0 }
  }

  /// Bytes read so far.
  pub fn bytes_read(&self) -> u64 {
    self.read
  }

  /// The next line (without its `\n`) into `buf`; false at the end.
  pub fn next_into(&mut self, buf: &mut Vec<u8>) -> std::result::Result<bool, LineError> {
    loop {
      buf.clear();
      let mut any = false;
      let mut over = false;
      loop {
        let avail = self.reader.fill_buf()?;
        if avail.is_empty() {
          if !any {
            return Ok(false);
          }
          break;
        }
        any = true;
        let (take, used, done) = match avail.iter().position(|&b| b == b'\n') {
          Some(i) => (i, i + 1, true),
          None => (avail.len(), avail.len(), false),
        };
        if !over {
          if buf.len() + take > self.max_line {
            over = true;
            buf.clear();
            buf.shrink_to(64 * 1024);
          } else {
            buf.extend_from_slice(&avail[..take]);
          }
        }
        self.reader.consume(used);
        self.read += used as u64;
        if self.read > self.max_total {
          return Err(LineError::TooLarge);
        }
        if done {
          break;
        }
      }
      if over {
        self.skipped += 1;
        continue;
      }
      return Ok(true);
    }
  }
}

/// The `TRANSCRIPT_TOO_LARGE` error for `what`.
pub fn too_large(what: &str, max: u64) -> Error {
  Error::new(ErrorCode::TranscriptTooLarge, format!("{what} is larger than {max} bytes (maxTranscriptBytes); it was not read"))
}

#[cfg(all(test, unix))]
mod tests {
  use super::*;
  use std::io::Read;
  use std::os::unix::fs::symlink;

  fn setup() -> (tempfile::TempDir, PathBuf, TenantFile) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tenant");
    std::fs::create_dir_all(root.join("projects/-w")).unwrap();
    std::fs::write(root.join("projects/-w/s.jsonl"), "{\"a\":1}\n").unwrap();
    let f = TenantFile::new(&root, "projects/-w/s.jsonl");
    (dir, root, f)
  }

  fn read_all(f: &TenantFile) -> Result<Option<String>> {
    Ok(f.open_read()?.map(|(mut file, _)| {
      let mut s = String::new();
      file.read_to_string(&mut s).unwrap();
      s
    }))
  }

  #[test]
  fn reads_a_regular_file_and_a_missing_one_is_none() {
    let (_d, root, f) = setup();
    assert_eq!(read_all(&f).unwrap().as_deref(), Some("{\"a\":1}\n"));
    assert_eq!(f.regular_len().unwrap(), Some(8));
    assert_eq!(read_all(&TenantFile::new(&root, "projects/-w/none.jsonl")).unwrap(), None);
    assert_eq!(read_all(&TenantFile::new(&root, "projects/-x/none.jsonl")).unwrap(), None);
    assert_eq!(read_all(&TenantFile::new(root.join("gone"), "projects/-x/none.jsonl")).unwrap(), None);
    let err = TenantFile::new(&root, "projects/../../etc/passwd").open_read().unwrap_err();
    assert_eq!(err.code, ErrorCode::TranscriptUnsafe);
  }

  #[test]
  fn a_link_at_every_component_below_the_root_is_refused() {
    let (d, root, f) = setup();
    // Elsewhere: a folder tree with a file the agent wants read.
    let other = d.path().join("other");
    std::fs::create_dir_all(other.join("projects/-w")).unwrap();
    std::fs::write(other.join("projects/-w/s.jsonl"), "SECRET\n").unwrap();
    let cases = [
      ("projects/-w/s.jsonl", other.join("projects/-w/s.jsonl")),
      ("projects/-w", other.join("projects/-w")),
      ("projects", other.join("projects")),
    ];
    for (component, target) in cases {
      let p = root.join(component);
      let saved = root.join("saved");
      std::fs::rename(&p, &saved).unwrap();
      symlink(&target, &p).unwrap();
      let err = read_all(&f).unwrap_err();
      assert_eq!(err.code, ErrorCode::TranscriptUnsafe, "{component}: {}", err.message);
      assert!(err.message.contains("symbolic link"), "{}", err.message);
      assert_eq!(f.regular_len().unwrap_err().code, ErrorCode::TranscriptUnsafe, "{component}");
      // Nor is a cut made through it.
      assert_eq!(f.cut_checked(0, 100, |_| Ok(())).unwrap_err().code, ErrorCode::TranscriptUnsafe, "{component}");
      // A write neither writes through the link nor follows it.
      let w = f.write_atomic(|w| w.write_all(b"NEW\n"));
      if component == "projects/-w/s.jsonl" {
        w.unwrap();
        assert!(!std::fs::symlink_metadata(&p).unwrap().file_type().is_symlink(), "the rename replaced the link");
      } else {
        assert_eq!(w.unwrap_err().code, ErrorCode::TranscriptUnsafe, "{component}");
      }
      assert_eq!(std::fs::read_to_string(other.join("projects/-w/s.jsonl")).unwrap(), "SECRET\n", "{component}");
      assert_eq!(std::fs::read_dir(other.join("projects/-w")).unwrap().count(), 1, "{component}: nothing new in the target");
      // Removing does not reach through the link either.
      let r = f.remove();
      if component == "projects/-w/s.jsonl" {
        r.unwrap();
      } else {
        assert_eq!(r.unwrap_err().code, ErrorCode::TranscriptUnsafe);
      }
      assert!(other.join("projects/-w/s.jsonl").exists(), "{component}");
      std::fs::remove_file(&p).ok();
      std::fs::remove_dir_all(&p).ok();
      std::fs::rename(&saved, &p).unwrap();
      std::fs::write(root.join("projects/-w/s.jsonl"), "{\"a\":1}\n").unwrap();
    }
    // A dangling link is refused too (not "missing").
    std::fs::remove_file(root.join("projects/-w/s.jsonl")).unwrap();
    symlink(d.path().join("nowhere"), root.join("projects/-w/s.jsonl")).unwrap();
    assert_eq!(read_all(&f).unwrap_err().code, ErrorCode::TranscriptUnsafe);
  }

  #[test]
  fn fifos_folders_and_hard_links_are_refused_without_blocking() {
    let (d, root, f) = setup();
    let p = root.join("projects/-w/s.jsonl");
    std::fs::remove_file(&p).unwrap();
    let c = std::ffi::CString::new(p.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = read_all(&f).unwrap_err(); // would block forever if opened for reading
    assert_eq!(err.code, ErrorCode::TranscriptUnsafe);
    assert!(err.message.contains("not a regular file"), "{}", err.message);
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    assert_eq!(read_all(&f).unwrap_err().code, ErrorCode::TranscriptUnsafe);
    assert_eq!(f.write_atomic(|w| w.write_all(b"x")).unwrap_err().code, ErrorCode::TranscriptUnsafe);
    std::fs::remove_dir(&p).unwrap();
    // A file where a folder belongs.
    std::fs::remove_dir_all(root.join("projects/-w")).unwrap();
    std::fs::write(root.join("projects/-w"), "").unwrap();
    assert_eq!(read_all(&f).unwrap_err().code, ErrorCode::TranscriptUnsafe);
    std::fs::remove_file(root.join("projects/-w")).unwrap();
    std::fs::create_dir(root.join("projects/-w")).unwrap();
    // A hard link to a file elsewhere (same file system).
    let victim = d.path().join("victim.jsonl");
    std::fs::write(&victim, "SECRET\n").unwrap();
    std::fs::hard_link(&victim, &p).unwrap();
    let err = read_all(&f).unwrap_err();
    assert!(err.message.contains("hard links"), "{}", err.message);
    assert!(f.cut_checked(0, 100, |_| Ok(())).unwrap_err().message.contains("hard links"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "SECRET\n", "a cut does not reach the other name");
  }

  #[test]
  fn a_cut_keeps_the_first_bytes_of_the_same_file_once_checked_and_a_missing_file_is_nothing() {
    let (_d, root, f) = setup();
    let p = root.join("projects/-w/s.jsonl");
    std::fs::write(&p, "{\"a\":1}\n{\"b\":2}\n").unwrap();
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&p);
    // The check sees what follows the cut; refused, nothing is cut.
    let err = f.cut_checked(8, 100, |w| Err(Error::internal(String::from_utf8_lossy(w).into_owned()))).unwrap_err();
    assert_eq!(err.message, "{\"b\":2}\n");
    assert_eq!(std::fs::read_to_string(&p).unwrap().len(), 16);
    // Not at a line's end, past the length, or more than `max` after it: nothing is cut.
    assert!(!f.cut_checked(7, 100, |_| Ok(())).unwrap());
    assert!(!f.cut_checked(17, 100, |_| Ok(())).unwrap());
    assert!(!f.cut_checked(8, 7, |_| Ok(())).unwrap());
    assert!(f.cut_checked(8, 100, |_| Ok(())).unwrap());
    assert_eq!((std::fs::read_to_string(&p).unwrap().as_str(), inode(&p)), ("{\"a\":1}\n", before));
    assert!(!TenantFile::new(&root, "projects/-w/none.jsonl").cut_checked(0, 100, |_| Ok(())).unwrap());
    assert!(!root.join("projects/-w/none.jsonl").exists());
  }

  #[test]
  fn writes_create_private_folders_and_removal_spares_link_targets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    let f = TenantFile::new(&root, "projects/-w/s.jsonl");
    f.write_atomic(|w| w.write_all(b"line\n")).unwrap();
    assert_eq!(read_all(&f).unwrap().as_deref(), Some("line\n"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root.join("projects/-w")), 0o700);
    assert_eq!(mode(&root.join("projects/-w/s.jsonl")), 0o600);
    // The session folder with a link to a folder outside: the link goes, the outside stays.
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), "x").unwrap();
    let sub = f.with_extension("").sibling("s/subagents/a.jsonl");
    sub.write_atomic(|w| w.write_all(b"sub\n")).unwrap();
    symlink(&outside, root.join("projects/-w/s/link")).unwrap();
    f.with_extension("").remove_tree().unwrap();
    f.remove().unwrap();
    assert!(!root.join("projects/-w/s").exists() && !root.join("projects/-w/s.jsonl").exists());
    assert!(outside.join("keep").exists());
    // The session folder itself a link: removed as a link.
    symlink(&outside, root.join("projects/-w/s")).unwrap();
    f.with_extension("").remove_tree().unwrap();
    assert!(outside.join("keep").exists() && std::fs::symlink_metadata(root.join("projects/-w/s")).is_err());
  }

  #[test]
  fn lines_over_the_cap_are_skipped_and_the_total_is_bounded() {
    let long = "x".repeat(100);
    let text = format!("a\n{long}\nb\n\nc");
    let mut l = BoundedLines::new(io::BufReader::with_capacity(16, text.as_bytes()), 10, 1000);
    let mut buf = vec![];
    let mut got = vec![];
    while l.next_into(&mut buf).unwrap() {
      got.push(String::from_utf8(buf.clone()).unwrap());
    }
    assert_eq!(got, ["a", "b", "", "c"]);
    assert_eq!(l.skipped, 1);
    assert_eq!(l.bytes_read(), text.len() as u64);
    let mut l = BoundedLines::new(io::BufReader::with_capacity(16, text.as_bytes()), 1000, 50);
    let mut n = 0;
    let r = loop {
      match l.next_into(&mut buf) {
        Ok(true) => n += 1,
        other => break other,
      }
    };
    assert!(matches!(r, Err(LineError::TooLarge)), "{r:?}");
    assert_eq!(n, 1, "the long line passed the bound");
  }
}
