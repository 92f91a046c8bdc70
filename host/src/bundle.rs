//! The guest file tree that travels inside `app.wasm`, and the build's
//! manifest beside it ([`Manifest`]: what the app read at build time).
//!
//! At build time the guest copies every directory it had mounted (the stdlib
//! at `/python`, the app at `/0`, its dependencies, ...) into an export
//! directory. [`embed`] packs that directory as a zstd-compressed tar into a
//! custom section of the component, so the one file is all a server needs
//! (apps built before December 2026 carry a gzipped tar in [`SECTION_V1`],
//! and still load). At run time [`unpack`] finds the section and extracts it
//! once into the cache, each file a link to one copy of its content that
//! every app with those bytes shares; the sandbox then mounts each top-level
//! directory read-only at the same guest path, so that imports at request
//! time find exactly what the build saw.
//!
//! An `app.wasm` is untrusted input: on a shared host, tenants upload their
//! own. Each entry is checked before it is written, and a refused tree
//! leaves nothing behind: at most [`MAX_TREE_ENTRIES`] entries and
//! [`MAX_TREE_BYTES`] bytes once decompressed (a decompression bomb stops
//! there), regular files and directories only (no symlink, hard link or
//! device), and plain relative paths.

use std::io::{Read, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use wasm_encoder::Encode;
use wasmparser::BinaryReader;

/// Name of the custom section; bump the suffix if the payload format changes.
/// Its payload is a tar compressed with zstd: a Flask app's tree (30 MB)
/// took 87–113 ms to inflate from gzip and 35–63 ms from zstd, which packs
/// it in 7.0 MB where gzip made 9.0.
pub const SECTION: &str = "wsgi-wasm:tree/v2";

/// The section an older build wrote: the same tar, gzipped.
pub const SECTION_V1: &str = "wsgi-wasm:tree/v1";

/// The zstd level a build packs the tree at: a Flask app's tree in 0.9 s,
/// where the highest levels took 8–17 s for 13% less.
const ZSTD_LEVEL: i32 = 9;

/// The largest window a tree's zstd frames may ask for (2^24 bytes): the
/// decoder allocates it, and a crafted payload must not make it allocate
/// more. Level 9, streamed as a build packs, asks for 2^22.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Most entries (files and directories) in an app's tree. CPython's standard
/// library with its bytecode is about 2,000; Django with it, about 7,000.
pub const MAX_TREE_ENTRIES: u64 = 100_000;

/// Most bytes an app's tree may unpack to, tar headers included.
pub const MAX_TREE_BYTES: u64 = 1 << 30;

/// Name of the custom section that holds the [`Manifest`], as JSON.
pub const MANIFEST_SECTION: &str = "wsgi-wasm:manifest/v1";

/// The largest manifest read from an `app.wasm` (an untrusted file).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// What the build learned about the app, for `run` to act on.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The environment variables the app read while it was imported and
    /// warmed up: their build-time values are in its snapshot.
    pub env_read: Vec<String>,
    /// Whether it went through the whole environment (`dict(os.environ)`),
    /// so that every variable's build-time value may be in its snapshot.
    pub env_iterated: bool,
}

impl Manifest {
    /// The manifest of a component, if it has one (an `app.wasm` built
    /// before there were manifests has none).
    ///
    /// # Errors
    /// Fails on a manifest that is too large or not the expected JSON.
    pub fn find(component: &[u8]) -> Result<Option<Self>> {
        let Some(json) = find_section(component, MANIFEST_SECTION)? else { return Ok(None) };
        if json.len() > MAX_MANIFEST_BYTES {
            bail!("its build manifest is {} bytes; at most {MAX_MANIFEST_BYTES} are read", json.len());
        }
        serde_json::from_slice(json).map(Some).context("its build manifest is not valid")
    }

    /// Appends the manifest to `component` as the [`MANIFEST_SECTION`].
    pub fn embed(&self, component: &mut Vec<u8>) {
        let json = serde_json::to_vec(self).expect("a manifest serializes");
        append_section(component, MANIFEST_SECTION, &json);
    }
}

/// Appends a custom section to `component`.
fn append_section(component: &mut Vec<u8>, name: &str, data: &[u8]) {
    let section = wasm_encoder::CustomSection { name: name.into(), data: data.into() };
    component.push(0); // the custom section id, for modules and components alike
    section.encode(component);
}

/// Appends `tree_dir`, packed, to `component` as the [`SECTION`] custom section.
///
/// # Errors
/// Fails if the directory cannot be read.
pub fn embed(component: &mut Vec<u8>, tree_dir: &Path) -> Result<()> {
    let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)?);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", tree_dir).with_context(|| format!("packing {}", tree_dir.display()))?;
    let packed = tar.into_inner()?.finish()?;
    append_section(component, SECTION, &packed);
    Ok(())
}

/// The packed file tree of an `app.wasm`, as one of the two sections holds it.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// [`SECTION`]: a tar, compressed with zstd.
    Zstd(&'a [u8]),
    /// [`SECTION_V1`]: a gzipped tar.
    Gzip(&'a [u8]),
}

/// Finds the tree's payload among the component's top-level sections.
///
/// Only section headers are read: nested core modules are skipped by their
/// size, never parsed.
///
/// # Errors
/// Fails if `bytes` is not a WebAssembly component, or has no such section
/// (a component not made by `wsgi-wasm build`).
pub fn find(bytes: &[u8]) -> Result<Payload<'_>> {
    if let Some(zstd) = find_section(bytes, SECTION)? {
        return Ok(Payload::Zstd(zstd));
    }
    find_section(bytes, SECTION_V1)?
        .map(Payload::Gzip)
        .with_context(|| format!("it has no `{SECTION}` section: it was not made by `wsgi-wasm build`"))
}

/// The payload of the custom section `name` among the component's
/// top-level sections, if there is one.
///
/// # Errors
/// Fails if `bytes` is not a WebAssembly component.
fn find_section<'a>(bytes: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    let mut reader = BinaryReader::new(bytes, 0);
    let preamble = reader.read_bytes(8).ok();
    match preamble {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {
            bail!("it is a core WebAssembly module, not a component")
        }
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => {}
        _ => bail!("it is not a WebAssembly component"),
    }
    while !reader.eof() {
        let id = reader.read_u8()?;
        let size = reader.read_var_u32()? as usize;
        let start = reader.original_position();
        let body = reader.read_bytes(size).context("the file is truncated")?;
        if id == 0 {
            let mut custom = BinaryReader::new(body, start);
            if custom.read_string()? == name {
                return Ok(Some(&body[custom.current_position()..]));
            }
        }
    }
    Ok(None)
}

/// Extracts the tree payload into `dest`, unless a previous run already did.
///
/// Extraction goes to a temporary sibling first and is renamed into place, so
/// a crash midway never leaves a half tree that a later start would trust.
/// The tree is mounted at the guest's `/`: its top-level directories
/// (`/python`, `/0`, ...) are the guest's roots.
///
/// Each file is a hard link to `files/SHA256`, written the first time any
/// app has a file with those bytes. Every app carries CPython's standard
/// library and `tzdata` (1,789 of a hello app's 1,846 files), and many
/// share their frameworks too, so a new app writes only what is its own.
/// Linking a name costs far less than creating a file (a Flask app's 2,170
/// files took 1.3–1.6 s to create). The trees are mounted read-only, so no
/// app can change a file another app links. Where a link fails (a file
/// system's limit on links to one file), the file is written on its own.
///
/// The payload is decompressed once, each entry checked as it comes, and a
/// tree refused midway is removed with the contents it was the first to
/// bring. (Checking the whole tree in a pass of its own first cost a Flask
/// app's load another 0.1 s of inflating.)
///
/// # Errors
/// Fails on a corrupt payload, one past the limits or with an entry other
/// than a file or directory (see the module docs), or an unwritable cache.
pub fn unpack(payload: Payload<'_>, dest: &Path, files: &Path) -> Result<()> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().context("cache path has no parent")?;
    for dir in [parent, files] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = tempdir_in(parent)?;
    // The contents this tree was the first to bring, removed again if a
    // later entry refuses the tree.
    let mut added = Vec::new();
    let written = for_each_entry(payload, |entry| {
        if !entry.header().entry_type().is_file() {
            // `unpack_in` also refuses a path that would land outside `tmp`.
            entry.unpack_in(&tmp)?;
            return Ok(());
        }
        // `for_each_entry` allows only plain relative paths.
        let path = tmp.join(entry.path()?);
        let mut bytes = Vec::with_capacity(usize::try_from(entry.header().size()?).unwrap_or(0));
        entry.read_to_end(&mut bytes)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        link_or_write(files, &bytes, &path, &mut added)
    });
    if let Err(err) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        // A tree linked to one of these meanwhile keeps its own link, and
        // the next tree that needs the content writes it again.
        for shared in added {
            let _ = std::fs::remove_file(shared);
        }
        return Err(err);
    }
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another process won the race: its copy is as good as ours.
        Err(_) if dest.is_dir() => Ok(std::fs::remove_dir_all(&tmp)?),
        Err(e) => Err(e).with_context(|| format!("moving tree to {}", dest.display())),
    }
}

/// Puts `bytes` at `path` as a link to their copy in `files`, written there
/// first if no tree had them yet (and then pushed to `added`); copies them
/// to `path` if linking fails.
fn link_or_write(files: &Path, bytes: &[u8], path: &Path, added: &mut Vec<PathBuf>) -> Result<()> {
    use sha2::Digest as _;
    let shared = files.join(hex(&sha2::Sha256::digest(bytes)));
    if !shared.is_file() {
        // One thread writes at a time, and looks again first: trees
        // unpacked at once mostly have the same files, and each writing its
        // own copy to rename over the others' made three hello trees take
        // 4.9 s instead of 0.6 for one (ext4 searches past the inodes freed).
        static WRITING: Mutex<()> = Mutex::new(());
        let _writing = WRITING.lock().unwrap_or_else(PoisonError::into_inner);
        if !shared.is_file() {
            // Written whole beside it, then renamed: a file in `files` is
            // complete, and two processes writing the same one agree.
            let mut tmp = temporary_file(files)?;
            tmp.write_all(bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
            tmp.persist(&shared).with_context(|| format!("writing {}", shared.display()))?;
            added.push(shared.clone());
        }
    }
    // A path the tree names twice is replaced, never written through: it is
    // a link to a file other apps share.
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?;
    }
    if std::fs::hard_link(&shared, path).is_err() {
        // `path` does not exist: this makes a file of its own.
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads the tree payload, checking each entry against the limits, and hands
/// every one to `visit`.
fn for_each_entry(
    payload: Payload<'_>,
    mut visit: impl FnMut(&mut tar::Entry<'_, std::io::BufReader<Capped<'_>>>) -> Result<()>,
) -> Result<()> {
    let corrupt = "the embedded file tree is corrupt (or larger than 1 GiB unpacked)";
    let inner: Box<dyn Read + '_> = match payload {
        Payload::Zstd(bytes) => {
            let mut zstd = zstd::stream::read::Decoder::with_buffer(bytes).context(corrupt)?;
            zstd.window_log_max(ZSTD_WINDOW_LOG_MAX).context(corrupt)?;
            Box::new(zstd)
        }
        Payload::Gzip(bytes) => Box::new(flate2::read::GzDecoder::new(bytes)),
    };
    // Buffered: tar reads a 512-byte header at a time, and each unbuffered
    // read was a decompression call of its own (a hello tree inflated in
    // 105 ms that way, in 75 with the buffer).
    let inflated = Capped { inner, left: MAX_TREE_BYTES };
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 16, inflated));
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(false);
    let mut count = 0u64;
    let mut declared = 0u64;
    for entry in archive.entries().context(corrupt)? {
        let mut entry = entry.context(corrupt)?;
        count += 1;
        if count > MAX_TREE_ENTRIES {
            bail!("the embedded file tree has more than {MAX_TREE_ENTRIES} entries");
        }
        let path = entry.path().context(corrupt)?.into_owned();
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            bail!(
                "the embedded file tree holds {} as a {kind:?}: only files and directories are allowed",
                path.display()
            );
        }
        if !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
            bail!("the embedded file tree has an entry outside it: {}", path.display());
        }
        declared = declared.saturating_add(entry.header().size().context(corrupt)?);
        if declared > MAX_TREE_BYTES {
            bail!("the embedded file tree is larger than {} MiB unpacked", MAX_TREE_BYTES >> 20);
        }
        visit(&mut entry).with_context(|| format!("unpacking {}", path.display()))?;
    }
    Ok(())
}

/// A reader that fails once it has yielded `left` bytes: whatever the tar
/// headers claim, decompression stops there.
struct Capped<'a> {
    inner: Box<dyn Read + 'a>,
    left: u64,
}

impl Read for Capped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| std::io::Error::other("unpacks past the limit"))?;
        Ok(n)
    }
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let mut rnd = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut rnd)).context("reading /dev/urandom")?;
    let path = parent.join(format!(".tmp-{}", hex(&rnd)));
    std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

/// A new file in `dir` under a name no other writer uses, made as
/// `File::create` makes one (the umask applies), and removed when dropped
/// unless `persist` gave it its name. The cache's files are written whole
/// into one of these and then renamed, so a file under its name is
/// complete.
///
/// # Errors
/// The file cannot be created.
pub fn temporary_file(dir: &Path) -> Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt as _;
    tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embed_then_find_then_unpack_round_trips() {
        let src = std::env::temp_dir().join(format!("wsgi-wasm-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(src.join("python/json")).unwrap();
        std::fs::write(src.join("python/json/__init__.py"), b"x = 1\n").unwrap();
        std::fs::create_dir_all(src.join("0")).unwrap();

        // The smallest component: the preamble alone.
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        embed(&mut component, &src).unwrap();
        let payload = find(&component).unwrap();
        assert!(matches!(payload, Payload::Zstd(_)), "{payload:?}");
        let dest = src.with_extension("out");
        let _ = std::fs::remove_dir_all(&dest);
        unpack(payload, &dest.join("trees/a"), &dest.join("files")).unwrap();
        let tree = dest.join("trees/a");
        assert!(tree.join("0").is_dir());
        assert_eq!(std::fs::read(tree.join("python/json/__init__.py")).unwrap(), b"x = 1\n");
        std::fs::remove_dir_all(&src).unwrap();
        std::fs::remove_dir_all(&dest).unwrap();
    }

    /// A tar of `files` (path, bytes), compressed as a build does.
    fn tree_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).unwrap());
        for (path, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_path(path).unwrap();
            header.set_size(bytes.len() as u64);
            header.set_cksum();
            tar.append(&header, *bytes).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn apps_link_one_copy_of_the_files_they_share_and_have_their_own() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("wsgi-wasm-shared-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = dir.join("files");
        let os: &[u8] = b"import posix\n";
        unpack(
            Payload::Zstd(&tree_of(&[("python/os.py", os), ("0/app.py", b"a = 1\n")])),
            &dir.join("trees/a"),
            &files,
        )
        .unwrap();
        unpack(
            Payload::Zstd(&tree_of(&[("python/os.py", os), ("0/app.py", b"b = 2\n")])),
            &dir.join("trees/b"),
            &files,
        )
        .unwrap();
        let meta = |path: &str| std::fs::metadata(dir.join("trees").join(path)).unwrap();
        assert_eq!(meta("a/python/os.py").ino(), meta("b/python/os.py").ino(), "the stdlib file is one file");
        assert_ne!(meta("a/0/app.py").ino(), meta("b/0/app.py").ino());
        assert_eq!(std::fs::read(dir.join("trees/b/0/app.py")).unwrap(), b"b = 2\n");
        assert_eq!(std::fs::read(dir.join("trees/a/python/os.py")).unwrap(), os);
        // One copy of each distinct content, and nothing half written.
        assert_eq!(std::fs::read_dir(&files).unwrap().count(), 3);

        // A tree that names the shared file's path twice, the second time
        // with other bytes, gets those bytes, and the other apps keep theirs.
        let twice = tree_of(&[("python/os.py", os), ("python/os.py", b"evil = 1\n")]);
        unpack(Payload::Zstd(&twice), &dir.join("trees/c"), &files).unwrap();
        assert_eq!(std::fs::read(dir.join("trees/c/python/os.py")).unwrap(), b"evil = 1\n");
        assert_eq!(std::fs::read(dir.join("trees/a/python/os.py")).unwrap(), os);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_tree_leaves_nothing() {
        // A file no tree had yet, then a symlink: the file is written into
        // the store before the symlink refuses the tree. Gzipped, as an
        // older build packed it.
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut file = tar::Header::new_gnu();
        file.set_path("python/ok.py").unwrap();
        file.set_size(2);
        file.set_cksum();
        tar.append(&file, &b"x\n"[..]).unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_path("python/etc").unwrap();
        link.set_link_name("/etc").unwrap();
        link.set_size(0);
        link.set_cksum();
        tar.append(&link, std::io::empty()).unwrap();
        let payload = tar.into_inner().unwrap().finish().unwrap();
        let parent = std::env::temp_dir().join(format!("wsgi-wasm-refused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        let (trees, files) = (parent.join("trees"), parent.join("files"));
        let err = format!("{:#}", unpack(Payload::Gzip(&payload), &trees.join("a"), &files).unwrap_err());
        assert!(err.contains("python/etc as a Symlink"), "{err}");
        let left = |dir: &Path| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
        assert_eq!(left(&trees), Vec::<PathBuf>::new(), "no tree, whole or half");
        assert_eq!(left(&files), Vec::<PathBuf>::new(), "no content the refused tree brought");

        // Content another tree already brought stays.
        unpack(Payload::Zstd(&tree_of(&[("python/ok.py", b"x\n")])), &trees.join("b"), &files).unwrap();
        unpack(Payload::Gzip(&payload), &trees.join("a"), &files).unwrap_err();
        assert_eq!(left(&files).len(), 1);
        assert_eq!(std::fs::read(trees.join("b/python/ok.py")).unwrap(), b"x\n");
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn find_refuses_core_modules_and_foreign_components() {
        assert!(find(b"\0asm\x01\0\0\0").unwrap_err().to_string().contains("core"));
        assert!(find(b"\0asm\x0d\0\x01\0\x00\x7f").unwrap_err().to_string().contains("truncated"));
        let err = find(b"\0asm\x0d\0\x01\0").unwrap_err().to_string();
        assert!(err.contains("not made by"), "{err}");
        assert!(find(b"garbage").is_err());
    }
}
