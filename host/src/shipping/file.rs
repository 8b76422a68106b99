//! A log file that rotates itself by size: `access.log` is the live file,
//! `access.log.1` the newest rotated one, up to `access.log.{keep}`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write as _};
use std::path::{Path, PathBuf};

/// Appends lines to `path`; before a line would take it past `max_bytes` it
/// is renamed `path.1` (older ones shift up, the one past `keep` is
/// overwritten) and a new file is started. A single line longer than
/// `max_bytes` gets a file of its own rather than being cut.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: BufWriter<File>,
    /// Bytes in the live file, buffered ones included.
    size: u64,
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending; an existing file's size
    /// counts toward `max_bytes`.
    ///
    /// # Errors
    /// The file cannot be opened (missing folder, permissions).
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            max_bytes,
            keep,
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
        })
    }

    /// Writes `line` and a newline (buffered: see [`RotatingFile::flush`]).
    ///
    /// # Errors
    /// Writing or rotating failed.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.file.write_all(b"\n")?;
        self.size += len;
        Ok(())
    }

    /// Hands buffered lines to the operating system.
    ///
    /// # Errors
    /// Writing failed.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        for n in (1..self.keep).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, self.rotated(1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sidecar-rotating-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn rotates_at_max_bytes_and_loses_nothing_within_keep() {
        let dir = dir("keep");
        let path = dir.join("access.log");
        // 10-byte lines (9 + newline), 100-byte files: 10 lines per file.
        let mut file = RotatingFile::open(&path, 100, 3).unwrap();
        for i in 0..40 {
            file.write_line(format!("line-{i:04}").as_bytes()).unwrap();
        }
        file.flush().unwrap();
        let mut all = Vec::new();
        for p in [
            dir.join("access.log.3"),
            dir.join("access.log.2"),
            dir.join("access.log.1"),
            path.clone(),
        ] {
            let lines = lines_of(&p);
            assert_eq!(lines.len(), 10, "{}", p.display());
            assert!(std::fs::metadata(&p).unwrap().len() <= 100);
            all.extend(lines);
        }
        let expected: Vec<String> = (0..40).map(|i| format!("line-{i:04}")).collect();
        assert_eq!(all, expected, "every line, in order, across rotations");
        assert!(!dir.join("access.log.4").exists());
    }

    #[test]
    fn keeps_only_keep_rotated_files() {
        let dir = dir("drop");
        let path = dir.join("access.log");
        let mut file = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..50 {
            file.write_line(format!("line-{i:04}").as_bytes()).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(lines_of(&path)[0], "line-0040");
        assert_eq!(lines_of(&dir.join("access.log.1"))[0], "line-0030");
        assert_eq!(lines_of(&dir.join("access.log.2"))[0], "line-0020");
        assert!(
            !dir.join("access.log.3").exists(),
            "oldest beyond keep: gone"
        );

        let path = dir.join("none.log");
        let mut file = RotatingFile::open(&path, 100, 0).unwrap();
        for i in 0..15 {
            file.write_line(format!("line-{i:04}").as_bytes()).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(lines_of(&path).len(), 5);
        assert!(
            !dir.join("none.log.1").exists(),
            "keep = 0: no rotated file"
        );
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = dir("append");
        let path = dir.join("access.log");
        std::fs::write(&path, "old-00001\n".repeat(9)).unwrap();
        let mut file = RotatingFile::open(&path, 100, 1).unwrap();
        file.write_line(b"new-00001").unwrap();
        file.write_line(b"new-00002").unwrap();
        file.flush().unwrap();
        let live = lines_of(&path);
        assert_eq!(live, ["new-00002"]);
        let rotated = lines_of(&dir.join("access.log.1"));
        assert_eq!(rotated.len(), 10);
        assert_eq!(rotated[9], "new-00001");

        // A line longer than max_bytes is written whole, in a file of its own.
        let long = "x".repeat(150);
        file.write_line(long.as_bytes()).unwrap();
        file.write_line(b"after").unwrap();
        file.flush().unwrap();
        assert_eq!(lines_of(&dir.join("access.log.1")), [long]);
        assert_eq!(lines_of(&path), ["after"]);
    }
}
