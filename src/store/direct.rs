//! The directory backend's durable writes (originals and sidecars): object_store's
//! `LocalFileSystem` with `fsync`, except that a large original goes around the page
//! cache.
//!
//! An upload is synced before it is answered, so nothing is gained by leaving its bytes
//! in the page cache for the kernel to write back later, and on a virtual machine that
//! hands free memory back to its host, new page-cache pages are where an upload's CPU
//! went: 256 KiB buffered writes cost 0.3 ms a MB for the first 2 GB written after
//! memory settled, 1.1 over 4 GB, 2 over 6, while `O_DIRECT` writes from the upload
//! buffer cost 0.2-0.4 ms a MB, the sync included, however much came before
//! (DECISIONS, "Originals written around the page cache"). It also keeps a stream of
//! uploads from pushing cached transforms out of the page cache. The price: the first
//! transform of a new original reads it from the disk (30-43 ms against 23-34 for a
//! 10 MB photo's first thumbnail here).
//!
//! `O_DIRECT` wants the memory, the file offset and the length aligned to the disk's
//! block. Upload buffers are (see `buffers`), so the bytes up to the last whole block
//! go straight to the disk and the short tail through the page cache. Anything else
//! (a small or unaligned payload, a filesystem that refuses `O_DIRECT`, a put of
//! another mode) is the wrapped store's put as before.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The alignment `O_DIRECT` is given: the largest logical block size in common use
/// (disks with 512-byte blocks accept it too).
const BLOCK: usize = 4096;

/// Payloads smaller than this are written through the page cache: a sidecar, a small
/// upload (whose buffer is not block-aligned anyway, see `buffers`).
const SMALLEST_DIRECT: usize = 1 << 20;

/// See the module documentation.
#[derive(Debug)]
pub struct DirectFiles {
    files: LocalFileSystem,
    /// Cleared the first time the filesystem refuses `O_DIRECT` (tmpfs before Linux
    /// 6.6, some FUSE filesystems); every put then goes through the page cache.
    direct: AtomicBool,
}

impl DirectFiles {
    /// Wraps `files`, which must sync its puts (`with_fsync(true)`): the puts left to it
    /// are then as durable as the direct ones.
    pub fn new(files: LocalFileSystem) -> Self {
        Self {
            files,
            direct: AtomicBool::new(true),
        }
    }

    /// The payload's chunks if they can go to the disk directly: a create-if-absent put
    /// of at least [`SMALLEST_DIRECT`] bytes, every chunk starting on a block boundary
    /// and all but the last a whole number of blocks long.
    fn direct_chunks(&self, payload: &PutPayload, opts: &PutOptions) -> Option<Vec<Bytes>> {
        let wanted = self.direct.load(Ordering::Relaxed)
            && matches!(opts.mode, PutMode::Create)
            && opts.attributes.is_empty()
            && payload.content_length() >= SMALLEST_DIRECT;
        if !wanted {
            return None;
        }
        let chunks: Vec<Bytes> = payload
            .iter()
            .filter(|chunk| !chunk.is_empty())
            .cloned()
            .collect();
        let (_, whole) = chunks.split_last()?;
        let aligned = chunks
            .iter()
            .all(|chunk| (chunk.as_ptr() as usize).is_multiple_of(BLOCK))
            && whole.iter().all(|chunk| chunk.len().is_multiple_of(BLOCK));
        aligned.then_some(chunks)
    }
}

/// What became of a direct put.
enum Direct {
    Created,
    AlreadyThere,
    /// The filesystem refused `O_DIRECT`.
    Refused,
}

/// Writes `chunks` to `dest` unless something is there: staged beside it under a name
/// the listing skips (`<name>#<digits>`, as `LocalFileSystem` stages its own puts),
/// synced, hard-linked into place (which fails if `dest` exists) and the directory
/// synced.
fn put_direct(dest: &FsPath, chunks: &[Bytes]) -> io::Result<Direct> {
    let (mut file, staging) = match open_staging(dest) {
        Ok(opened) => opened,
        Err(err) => return refused_or(err),
    };
    let written = write_direct(&mut file, chunks)
        .and_then(|()| file.sync_all())
        .and_then(|()| publish(&staging, dest));
    drop(file);
    let _ = std::fs::remove_file(&staging);
    written.or_else(refused_or)
}

/// `EINVAL` from an open or a write with `O_DIRECT` is the filesystem refusing it.
fn refused_or(err: io::Error) -> io::Result<Direct> {
    match err.raw_os_error() == Some(libc::EINVAL) {
        true => Ok(Direct::Refused),
        false => Err(err),
    }
}

/// A new staging file for `dest` opened for direct writes, in its directory, made if
/// missing.
fn open_staging(dest: &FsPath) -> io::Result<(File, PathBuf)> {
    for attempt in 1.. {
        let mut staging = dest.as_os_str().to_owned();
        staging.push(format!("#{attempt}"));
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&staging);
        match opened {
            Ok(file) => return Ok((file, staging.into())),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
            Err(err) if err.kind() == ErrorKind::NotFound => match dest.parent() {
                Some(directory) if !directory.exists() => create_directories(directory)?,
                _ => return Err(err),
            },
            Err(err) => return Err(err),
        }
    }
    unreachable!("attempts are unbounded")
}

/// Makes `directory` and its missing ancestors, syncing the parent of each new one so
/// that its name survives a power cut as the file's will.
fn create_directories(directory: &FsPath) -> io::Result<()> {
    let missing: Vec<&FsPath> = directory
        .ancestors()
        .take_while(|ancestor| !ancestor.exists())
        .collect();
    std::fs::create_dir_all(directory)?;
    for parent in missing.iter().filter_map(|made| made.parent()) {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Writes the whole blocks of `chunks` with `O_DIRECT` in one vectored write, then the
/// tail through the page cache.
fn write_direct(file: &mut File, chunks: &[Bytes]) -> io::Result<()> {
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let tail = total % BLOCK;
    let last = &chunks[chunks.len() - 1];
    let (head, rest) = last.split_at(last.len() - tail);
    let mut slices: Vec<IoSlice> = chunks[..chunks.len() - 1]
        .iter()
        .map(|chunk| IoSlice::new(chunk))
        .chain((!head.is_empty()).then(|| IoSlice::new(head)))
        .collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices)? {
            0 => return Err(ErrorKind::WriteZero.into()),
            written => IoSlice::advance_slices(&mut slices, written),
        }
    }
    if !rest.is_empty() {
        let fd = file.as_raw_fd();
        // SAFETY: fcntl on a descriptor `file` owns, with no pointers involved.
        let cleared = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) == 0
        };
        if !cleared {
            return Err(io::Error::last_os_error());
        }
        file.write_all(rest)?;
    }
    Ok(())
}

/// Links the synced `staging` file at `dest`, then syncs the directory so the new name
/// survives a power cut.
fn publish(staging: &FsPath, dest: &FsPath) -> io::Result<Direct> {
    match std::fs::hard_link(staging, dest) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::AlreadyExists => return Ok(Direct::AlreadyThere),
        Err(err) => return Err(err),
    }
    if let Some(directory) = dest.parent() {
        File::open(directory)?.sync_all()?;
    }
    Ok(Direct::Created)
}

impl fmt::Display for DirectFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DirectFiles({})", self.files)
    }
}

#[async_trait]
impl ObjectStore for DirectFiles {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if let Some(chunks) = self.direct_chunks(&payload, &opts) {
            let dest = self.files.path_to_filesystem(location)?;
            let put = tokio::task::spawn_blocking(move || put_direct(&dest, &chunks)).await;
            let direct = put.unwrap_or_else(|panicked| Err(io::Error::other(panicked)));
            match direct.map_err(|err| generic(location, err))? {
                Direct::Created => {
                    return Ok(PutResult {
                        e_tag: None,
                        version: None,
                        extensions: Default::default(),
                    })
                }
                Direct::AlreadyThere => {
                    return Err(object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "the object exists".into(),
                    })
                }
                Direct::Refused => {
                    self.direct.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        store = %self.files,
                        "the filesystem refused O_DIRECT: originals go through the page cache"
                    );
                }
            }
        }
        self.files.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.files.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.files.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.files.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.files.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.files.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.files.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.files.rename_opts(from, to, options).await
    }
}

/// An I/O error of a direct put, as object_store reports its own.
fn generic(location: &Path, err: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "DirectFiles",
        source: format!("writing {location}: {err}").into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of a pattern, starting on a block boundary, in 256 KiB slices as
    /// `Store` hands them over.
    fn aligned_chunks(len: usize) -> Vec<Bytes> {
        let room = Bytes::from(
            (0..len + BLOCK)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<_>>(),
        );
        let start = room.as_ptr().align_offset(BLOCK);
        let bytes = room.slice(start..start + len);
        (0..len)
            .step_by(256 << 10)
            .map(|at| bytes.slice(at..len.min(at + (256 << 10))))
            .collect()
    }

    fn concatenated(chunks: &[Bytes]) -> Vec<u8> {
        chunks.concat()
    }

    #[test]
    fn an_aligned_payload_is_written_directly_once_and_the_staging_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("original");
        let chunks = aligned_chunks((3 << 20) + 123);
        assert!(matches!(put_direct(&dest, &chunks), Ok(Direct::Created)));
        assert_eq!(std::fs::read(&dest).unwrap(), concatenated(&chunks));
        let other = aligned_chunks(2 << 20);
        assert!(matches!(
            put_direct(&dest, &other),
            Ok(Direct::AlreadyThere)
        ));
        assert_eq!(std::fs::read(&dest).unwrap(), concatenated(&chunks));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["original"], "no staging file left behind");
        // In directories not made yet, and with no tail to write through the cache.
        let deeper = dir.path().join("a/b/original");
        assert!(matches!(put_direct(&deeper, &other), Ok(Direct::Created)));
        assert_eq!(std::fs::read(&deeper).unwrap(), concatenated(&other));
    }

    /// A refusal (`EINVAL`, here from memory off the block boundary, as a filesystem
    /// without `O_DIRECT` answers the open) leaves nothing behind, so that the put can
    /// go through the page cache instead.
    #[test]
    fn a_refused_direct_write_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("original");
        let room = Bytes::from(vec![7u8; (2 << 20) + 2 * BLOCK]);
        let start = room.as_ptr().align_offset(BLOCK) + 1;
        let misaligned = vec![room.slice(start..start + (2 << 20))];
        assert!(matches!(
            put_direct(&dest, &misaligned),
            Ok(Direct::Refused)
        ));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }

    #[tokio::test]
    async fn every_put_arrives_whole_whichever_way_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let store = DirectFiles::new(files.with_fsync(true));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let aligned = aligned_chunks((2 << 20) + 7);
        let unaligned = vec![Bytes::from(vec![7u8; (2 << 20) + 1]).slice(1..)];
        let small = aligned_chunks(1000);
        let cases = [
            ("a/b/new-directory", &aligned),
            ("a/b/aligned", &aligned),
            ("a/b/unaligned", &unaligned),
            ("a/b/small", &small),
        ];
        for (key, chunks) in cases {
            let payload: PutPayload = chunks.iter().cloned().collect();
            let eligible = store.direct_chunks(&payload, &create()).is_some();
            assert_eq!(eligible, chunks == &aligned, "{key}");
            let path = Path::from(key);
            store
                .put_opts(&path, payload.clone(), create())
                .await
                .unwrap();
            let on_disk = std::fs::read(dir.path().join(key)).unwrap();
            assert_eq!(on_disk, concatenated(chunks), "{key}");
            let again = store.put_opts(&path, payload, create()).await;
            assert!(
                matches!(again, Err(object_store::Error::AlreadyExists { .. })),
                "{key}: {again:?}"
            );
        }
        assert!(store.direct.load(Ordering::Relaxed), "ext4 takes O_DIRECT");
    }
}
