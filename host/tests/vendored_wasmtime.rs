//! Tests of the patched wasmtime in `vendor/` on its own, under the engine
//! settings the server uses: small hand-written core modules, no server.
//!
//! The end-to-end tests cover the patches as a Python app exercises them.
//! These cover the cases an app built by `wsgi-wasm build` never reaches,
//! where the patch must still behave as the spec says: overlapping segments,
//! a later eager write, a copy out of a lazy range, a segment out of bounds;
//! functions linked between a component's core instances, re-exported or
//! later referenced as values; globals linked the same way; a memory image
//! that a pool slot keeps resident maps only the pages touched, from a memfd
//! or from a file just written; and a core module compiled on its own is
//! used by the next component only where it is the same module in the same
//! place, and mapped once for all of them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use wasmtime::{
    Engine, Global, GlobalType, Instance, Linker, Module, Mutability, SharedModuleCode, Store, Table, Val, ValType,
};
use wsgi_wasm::codecache::{CodeCache, SharedModuleFiles};
use wsgi_wasm::engine::PoolSpec;

fn engine() -> Engine {
    Engine::new(&config(false, scratch_modules())).unwrap()
}

/// The server's engine settings; `keep_resident` as `engine_config` takes it.
fn config(keep_resident: bool, modules: Arc<dyn SharedModuleCode>) -> wasmtime::Config {
    wsgi_wasm::engine::engine_config(&pool(), keep_resident, modules)
}

fn pool() -> PoolSpec {
    PoolSpec { slots: 2, memory_bytes: 16 << 20, fuel: false, perf_map: false }
}

/// A directory of this test's own, empty, under the target's scratch space.
fn scratch_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("vendored-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The server's store of shared modules, in a fresh directory.
fn scratch_modules() -> Arc<SharedModuleFiles> {
    CodeCache::new(&scratch_dir("cache")).shared_modules()
}

/// Defines the shared table, as `$main` does in a componentize-py app, and
/// calls or copies through it.
const MAIN: &str = r#"
(module
  (type $t (func (result i32)))
  (table (export "table") 8 funcref)
  (func (export "call") (param i32) (result i32)
    (call_indirect (type $t) (local.get 0)))
  (func (export "copy") (param i32 i32 i32)
    (table.copy (local.get 0) (local.get 1) (local.get 2))))
"#;

/// A dynamically linked library: places its functions at an imported base,
/// the form the patch applies lazily. `{n}` is the first value they return.
fn library(n: i32, count: i32) -> String {
    let funcs: String = (0..count).map(|i| format!("(func $f{i} (result i32) i32.const {})\n", n + i)).collect();
    let names: String = (0..count).map(|i| format!(" $f{i}")).collect();
    format!(
        r#"(module
          (type $t (func (result i32)))
          (import "env" "table" (table 0 funcref))
          (import "env" "base" (global i32))
          {funcs}
          (elem (global.get 0) func{names})
          (func (export "call") (param i32) (result i32)
            (call_indirect (type $t) (local.get 0))))"#
    )
}

struct World {
    store: Store<()>,
    linker: Linker<()>,
    table: Table,
    main: Instance,
}

impl World {
    fn new(engine: &Engine) -> Self {
        let mut store = Store::new(engine, ());
        // No ticker runs here: the epoch stays 0, so any deadline past it
        // never fires.
        store.set_epoch_deadline(1);
        let main = Instance::new(&mut store, &Module::new(engine, wat(MAIN)).unwrap(), &[]).unwrap();
        let table = main.get_table(&mut store, "table").unwrap();
        let mut linker = Linker::new(engine);
        linker.define(&store, "env", "table", table).unwrap();
        Self { store, linker, table, main }
    }

    /// Instantiates `wat` with the global `env.base` set to `base`.
    fn link(&mut self, wat_text: &str, base: i32) -> wasmtime::Result<Instance> {
        let engine = self.store.engine().clone();
        let module = Module::new(&engine, wat(wat_text)).unwrap();
        let global =
            Global::new(&mut self.store, GlobalType::new(ValType::I32, Mutability::Const), Val::I32(base)).unwrap();
        let mut linker = self.linker.clone();
        linker.allow_shadowing(true).define(&self.store, "env", "base", global).unwrap();
        linker.instantiate(&mut self.store, &module)
    }

    /// Calls through the table from `instance`; `None` if the call traps.
    fn call(&mut self, instance: Instance, index: i32) -> Option<i32> {
        let call = instance.get_typed_func::<i32, i32>(&mut self.store, "call").unwrap();
        call.call(&mut self.store, index).ok()
    }
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[test]
fn a_later_segment_wins_where_segments_overlap() {
    let mut world = World::new(&engine());
    let first = world.link(&library(10, 3), 2).unwrap();
    let second = world.link(&library(20, 2), 3).unwrap();
    let main = world.main;
    for from in [main, first, second] {
        assert_eq!(world.call(from, 2), Some(10));
        assert_eq!(world.call(from, 3), Some(20));
        assert_eq!(world.call(from, 4), Some(21));
        assert_eq!(world.call(from, 1), None, "an element no segment covers is null");
        assert_eq!(world.call(from, 5), None);
    }
}

#[test]
fn lazy_and_eager_segments_take_effect_in_order() {
    let mut world = World::new(&engine());
    world.link(&library(10, 3), 2).unwrap();
    // Element expressions, not plain functions: applied eagerly.
    let eager = r#"(module
      (import "env" "table" (table 0 funcref))
      (import "env" "base" (global i32))
      (func $x (result i32) i32.const 30)
      (elem (table 0) (global.get 0) funcref (ref.func $x)))"#;
    world.link(eager, 3).unwrap();
    let main = world.main;
    assert_eq!(world.call(main, 2), Some(10));
    assert_eq!(world.call(main, 3), Some(30), "eager after lazy");
    assert_eq!(world.call(main, 4), Some(12));
    world.link(eager, 5).unwrap();
    world.link(&library(50, 1), 5).unwrap();
    assert_eq!(world.call(main, 5), Some(50), "lazy after eager");
}

#[test]
fn elements_copied_out_of_a_lazy_range_keep_their_function() {
    let mut world = World::new(&engine());
    world.link(&library(10, 3), 2).unwrap();
    let main = world.main;
    let copy = main.get_typed_func::<(i32, i32, i32), ()>(&mut world.store, "copy").unwrap();
    // Slots 2..5 are still uninitialized: nothing has called through them.
    copy.call(&mut world.store, (5, 2, 3)).unwrap();
    assert_eq!(world.call(main, 5), Some(10));
    assert_eq!(world.call(main, 7), Some(12));
    // The host reads elements through the same path.
    let func = world.table.get(&mut world.store, 3).unwrap();
    let func = func.unwrap_func().unwrap().typed::<(), i32>(&world.store).unwrap();
    assert_eq!(func.call(&mut world.store, ()).unwrap(), 11);
}

#[test]
fn a_segment_out_of_bounds_fails_instantiation_after_the_ones_before_it() {
    let mut world = World::new(&engine());
    let wat_text = r#"(module
      (type $t (func (result i32)))
      (import "env" "table" (table 0 funcref))
      (import "env" "base" (global i32))
      (func $p (result i32) i32.const 40)
      (func $q (result i32) i32.const 41)
      (elem (global.get 0) func $p)
      (elem (i32.const 7) func $p $q))"#;
    let err = world.link(wat_text, 6).unwrap_err();
    assert!(format!("{err:?}").contains("out of bounds table access"), "{err:?}");
    let main = world.main;
    assert_eq!(world.call(main, 6), Some(40), "the first segment took effect");
    assert_eq!(world.call(main, 7), None, "the second did not");
    let err = world.link(&library(10, 3), -1).unwrap_err();
    assert!(format!("{err:?}").contains("out of bounds table access"), "{err:?}");
}

#[test]
fn each_store_builds_its_own_elements() {
    // Two stores in turn take the same pool slots; the second must see its
    // own instances' functions, not the first's.
    let engine = engine();
    for n in [10, 50] {
        let mut world = World::new(&engine);
        let lib = world.link(&library(n, 2), 0).unwrap();
        assert_eq!(world.call(lib, 0), Some(n));
        assert_eq!(world.call(lib, 1), Some(n + 1));
        assert_eq!(world.call(lib, 2), None);
    }
}

/// Three core instances linked inside one component: `$b` imports `$a`'s
/// function and re-exports that import, `$c` imports both the re-export and
/// a function `$b` defines, and both `$a` and `$c` then use a linked
/// function as a value (`ref.func`, `call_indirect`), which needs its type
/// and, in `$a`, the function's own `VMFuncRef`: linking no longer
/// initializes that one.
const LINKED: &str = r#"
(component
  (core module $a
    (type $t (func (result i32)))
    (table $tab 1 funcref)
    (func $f (export "f") (result i32) i32.const 42)
    (elem declare func $f)
    (func (export "own") (result i32)
      (table.set $tab (i32.const 0) (ref.func $f))
      (call_indirect $tab (type $t) (i32.const 0))))
  (core instance $a (instantiate $a))
  (core module $b
    (import "a" "f" (func $f (result i32)))
    (export "f" (func $f))
    (func (export "g") (result i32) (i32.add (call $f) (i32.const 1))))
  (core instance $b (instantiate $b (with "a" (instance $a))))
  (core module $c
    (type $t (func (result i32)))
    (import "b" "f" (func $f (result i32)))
    (import "b" "g" (func $g (result i32)))
    (table $tab 1 funcref)
    (elem declare func $f)
    (func (export "run") (result i32)
      (table.set $tab (i32.const 0) (ref.func $f))
      (i32.add
        (i32.mul (call $g) (i32.const 100))
        (i32.add (call $f) (call_indirect $tab (type $t) (i32.const 0))))))
  (core instance $c (instantiate $c (with "b" (instance $b))))
  (func (export "run") (result u32) (canon lift (core func $c "run")))
  (func (export "own") (result u32) (canon lift (core func $a "own"))))
"#;

/// Instantiates the component `text` in two stores in turn, so that the
/// second reuses the first one's pool slots, and runs `check` on each with a
/// caller of its `u32`-returning exports.
fn in_two_stores(text: &str, check: impl Fn(&mut dyn FnMut(&str) -> u32)) {
    use wasmtime::component::{Component, Linker};
    let engine = engine();
    let component = Component::new(&engine, wat(text)).unwrap();
    let linker = Linker::<()>::new(&engine);
    for _ in 0..2 {
        let mut store = Store::new(&engine, ());
        store.set_epoch_deadline(1);
        let instance = linker.instantiate(&mut store, &component).unwrap();
        check(&mut |name| {
            let func = instance.get_typed_func::<(), (u32,)>(&mut store, name).unwrap();
            func.call(&mut store, ()).unwrap().0
        });
    }
}

#[test]
fn functions_linked_between_core_instances_keep_their_code_and_type() {
    in_two_stores(LINKED, |call| {
        assert_eq!(call("run"), 43 * 100 + 42 + 42);
        assert_eq!(call("own"), 42);
    });
}

/// Globals linked between three core instances: `$b` imports `$a`'s mutable
/// and immutable globals, re-exports the mutable one and defines its own;
/// `$c` writes through the re-export and through `$b`'s, and each global's
/// owner must then read what `$c` wrote: one storage, whichever way linked.
const LINKED_GLOBALS: &str = r#"
(component
  (core module $a
    (global $m (export "m") (mut i32) (i32.const 5))
    (global (export "k") i32 (i32.const 7))
    (func (export "get-m") (result i32) global.get $m))
  (core instance $a (instantiate $a))
  (core module $b
    (import "a" "m" (global $m (mut i32)))
    (import "a" "k" (global $k i32))
    (export "m" (global $m))
    (export "k" (global $k))
    (global $n (export "n") (mut i32) (i32.const 100))
    (func (export "get-n") (result i32) global.get $n))
  (core instance $b (instantiate $b (with "a" (instance $a))))
  (core module $c
    (import "b" "m" (global $m (mut i32)))
    (import "b" "k" (global $k i32))
    (import "b" "n" (global $n (mut i32)))
    (import "a" "get-m" (func $get-m (result i32)))
    (import "b" "get-n" (func $get-n (result i32)))
    (func (export "run") (result i32)
      (global.set $m (i32.add (global.get $m) (global.get $k)))
      (global.set $n (i32.add (global.get $n) (global.get $m)))
      (i32.add (i32.mul (call $get-m) (i32.const 1000)) (call $get-n))))
  (core instance $c (instantiate $c (with "a" (instance $a)) (with "b" (instance $b))))
  (func (export "run") (result u32) (canon lift (core func $c "run"))))
"#;

#[test]
fn globals_linked_between_core_instances_share_one_storage() {
    // The second store must start again from the globals' initial values.
    in_two_stores(LINKED_GLOBALS, |call| {
        // m = 5 + 7, n = 100 + 12.
        assert_eq!(call("run"), 12 * 1000 + 112);
        // m = 12 + 7, n = 112 + 19.
        assert_eq!(call("run"), 19 * 1000 + 131);
    });
}

/// A memory image of 64 host pages of `a`, and functions to read and write
/// single bytes.
fn paged_image() -> String {
    let data = "a".repeat(64 * 4096);
    format!(
        r#"(module
          (memory (export "memory") 4)
          (data (i32.const 0) "{data}")
          (func (export "peek") (param i32) (result i32) (i32.load8_u (local.get 0)))
          (func (export "poke") (param i32 i32) (i32.store8 (local.get 0) (local.get 1))))"#
    )
}

/// One line of `/proc/self/smaps` and its `Rss`.
struct Mapping {
    range: std::ops::Range<usize>,
    writable: bool,
    /// A path, or nothing for anonymous memory.
    name: String,
    resident_pages: usize,
}

/// This process's mappings, from `/proc/self/smaps`.
fn mappings() -> Vec<Mapping> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut all: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        // address perms offset dev inode [pathname]
        let fields: Vec<_> = line.split_whitespace().collect();
        let range = fields.first().and_then(|r| r.split_once('-'));
        if let Some((Ok(start), Ok(end))) =
            range.map(|(s, e)| (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)))
        {
            let writable = fields.get(1).is_some_and(|perms| perms.contains('w'));
            let name = fields.get(5..).unwrap_or_default().join(" ");
            all.push(Mapping { range: start..end, writable, name, resident_pages: 0 });
        } else if let (Some(kb), Some(last)) = (line.strip_prefix("Rss:"), all.last_mut()) {
            last.resident_pages = kb.trim().trim_end_matches(" kB").parse::<usize>().unwrap() / 4;
        }
    }
    all
}

/// Resident size of the mapping that contains `addr`, in host pages, and
/// what it maps.
fn resident_pages_at(addr: usize) -> (usize, String) {
    let mapping = mappings().into_iter().find(|m| m.range.contains(&addr));
    let mapping = mapping.unwrap_or_else(|| panic!("no mapping contains {addr:#x}"));
    (mapping.resident_pages, mapping.name)
}

#[test]
fn a_resident_slot_maps_only_the_image_pages_touched_and_resets_what_was_written() {
    // The server's settings: memory kept resident, reset by PAGEMAP_SCAN.
    // A module compiled in memory has its image copied into a memfd.
    let engine = Engine::new(&config(true, scratch_modules())).unwrap();
    let module = Module::new(&engine, wat(&paged_image())).unwrap();
    let mapped = assert_maps_only_touched_pages(&engine, &module);
    assert!(mapped.starts_with("/memfd:"), "the image is mapped from {mapped:?}");
}

#[test]
fn an_image_mapped_from_a_just_written_file_maps_only_the_pages_touched_as_does_the_module() {
    // The server maps an image from its `.cwasm`, often written a moment
    // before (a first start), when its page cache is in large folios: a
    // plain read fault would map a whole folio.
    let engine = Engine::new(&config(true, scratch_modules())).unwrap();
    let compiled = Module::new(&engine, wat(&paged_image())).unwrap().serialize().unwrap();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("paged-{}.cwasm", std::process::id()));
    std::fs::write(&path, compiled).unwrap();
    // SAFETY: the file was written just now by this engine's `serialize`.
    let module = unsafe { Module::deserialize_file(&engine, &path) }.unwrap();
    let mapped = assert_maps_only_touched_pages(&engine, &module);
    assert_eq!(Some(mapped.as_str()), path.to_str(), "the image is mapped from the file");
    // The module's own mapping of the file (its code, and the image's bytes
    // that each reset copies from) maps only what was read, too: the ELF
    // headers and metadata, the code, and the one image page copied back.
    // 5 of its 68 pages here; 66 without the patch.
    let (resident, size) = module_mapping_pages(&mapped);
    std::fs::remove_file(&path).unwrap();
    assert!(resident <= 12, "the module's mapping of its file holds {resident} of its {size} pages");
}

/// Resident and mapped pages of the read-only and executable mappings of
/// `path` (the module's own; a pool slot's image is writable).
fn module_mapping_pages(path: &str) -> (usize, usize) {
    let module: Vec<_> = mappings().into_iter().filter(|m| m.name == path && !m.writable).collect();
    (module.iter().map(|m| m.resident_pages).sum(), module.iter().map(|m| m.range.len() / 4096).sum())
}

/// Runs `module` (of `paged_image`) twice in one pool slot, writing a page
/// and reading four others each time; returns what the image is mapped from.
fn assert_maps_only_touched_pages(engine: &Engine, module: &Module) -> String {
    let page = 4096;
    let mut image_at = 0;
    for round in 0..2 {
        let mut store = Store::new(engine, ());
        store.set_epoch_deadline(1);
        let instance = Instance::new(&mut store, module, &[]).unwrap();
        let peek = instance.get_typed_func::<i32, i32>(&mut store, "peek").unwrap();
        let poke = instance.get_typed_func::<(i32, i32), ()>(&mut store, "poke").unwrap();
        // What the first round wrote is gone: the reset copied the image back.
        assert_eq!(peek.call(&mut store, page).unwrap(), i32::from(b'a'), "round {round}");
        for i in [0, 16, 32, 48] {
            assert_eq!(peek.call(&mut store, i * page).unwrap(), i32::from(b'a'));
        }
        poke.call(&mut store, (page, i32::from(b'z'))).unwrap();
        assert_eq!(peek.call(&mut store, page).unwrap(), i32::from(b'z'));
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        image_at = memory.data_ptr(&store) as usize;
    }
    // Pages 0, 1, 16, 32 and 48 were touched. With the kernel's fault-around
    // each read would have mapped 16 pages (a large folio, more), all 64 in
    // all, and every reset's scan would inspect each of them.
    let (resident, mapped) = resident_pages_at(image_at);
    assert!((5..=8).contains(&resident), "{resident} of the image's 64 pages are mapped (from {mapped:?})");
    mapped
}

/// An app-shaped component for patch 8: `$main` owns the memory and a
/// snapshot-like data segment (`{data}`), and a library module (`{lib}`),
/// placed after `{before}`, reads it through a `call_indirect` and a call to
/// `$main`'s `first` (a direct call, were the library not shared). Apps
/// built by one toolchain differ in `$main` and share the rest.
fn app_component(data: &str, lib: &str, before: &str) -> String {
    format!(
        r#"
(component
  {before}
  (core module $main
    (memory (export "memory") 1)
    (func (export "first") (result i32) (i32.load8_u (i32.const 0)))
    (data (i32.const 0) "{data}"))
  (core instance $main (instantiate $main))
  (core module $lib
    (import "main" "memory" (memory 1))
    (import "main" "first" (func $first (result i32)))
    (type $t (func (param i32) (result i32)))
    (table 2 funcref)
    (elem (i32.const 0) $byte $twice)
    (func $byte (param i32) (result i32) (i32.load8_u (local.get 0)))
    (func $twice (param i32) (result i32) (i32.mul (local.get 0) (i32.const 2)))
    (func (export "run") (result i32)
      {lib}))
  (core instance $lib (instantiate $lib (with "main" (instance $main))))
  (func (export "run") (result u32) (canon lift (core func $lib "run"))))
"#
    )
}

/// The library's body: the first byte of `$main`'s data, plus 1000, twice,
/// plus that byte again through `$main`.
const READS_FIRST_BYTE: &str = "(i32.add (call_indirect (type $t) (i32.add (call_indirect (type $t) (i32.const 0) \
                                (i32.const 0)) (i32.const 1000)) (i32.const 1)) (call $first))";

/// What an app of [`app_component`] returns, its data starting with `byte`.
fn expected(byte: u8, plus: u32) -> u32 {
    (u32::from(byte) + plus) * 2 + u32::from(byte)
}

/// The server's store of shared modules, counting the modules stored (each
/// one compiled), with modules shared from [`MIN_CODE`] bytes of code (the
/// server shares only large ones).
struct Counting {
    files: Arc<SharedModuleFiles>,
    dir: PathBuf,
    stored: AtomicUsize,
}

/// Between the size of the library's function bodies and that of
/// `$main`'s, or of the module placed before them: only the library is
/// shared.
const MIN_CODE: usize = 24;

impl Counting {
    fn engine() -> (Engine, Arc<Counting>) {
        let dir = scratch_dir("shared");
        let files = CodeCache::new(&dir).shared_modules();
        let counting = Arc::new(Counting { files, dir: dir.join("modules"), stored: AtomicUsize::new(0) });
        let mut config = config(false, counting.clone());
        config.share_module_code(counting.clone(), MIN_CODE);
        (Engine::new(&config).unwrap(), counting)
    }

    fn stored(&self) -> usize {
        self.stored.load(Ordering::SeqCst)
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }
}

impl SharedModuleCode for Counting {
    fn load(&self, engine: &Engine, key: &[u8; 32]) -> wasmtime::Result<Option<Module>> {
        self.files.load(engine, key)
    }

    fn store(&self, engine: &Engine, key: &[u8; 32], compiled: &[u8]) -> wasmtime::Result<()> {
        self.stored.fetch_add(1, Ordering::SeqCst);
        self.files.store(engine, key, compiled)
    }
}

fn component(engine: &Engine, text: &str) -> wasmtime::Result<wasmtime::component::Component> {
    wasmtime::component::Component::new(engine, wat(text))
}

fn run(engine: &Engine, component: &wasmtime::component::Component) -> u32 {
    let mut store = Store::new(engine, ());
    store.set_epoch_deadline(1);
    let instance = wasmtime::component::Linker::<()>::new(engine).instantiate(&mut store, component).unwrap();
    let func = instance.get_typed_func::<(), (u32,)>(&mut store, "run").unwrap();
    func.call(&mut store, ()).unwrap().0
}

fn run_component(engine: &Engine, text: &str) -> u32 {
    run(engine, &component(engine, text).unwrap())
}

#[test]
fn a_module_compiled_for_one_app_is_used_by_the_next_and_reads_that_apps_data() {
    let (engine, shared) = Counting::engine();
    assert_eq!(run_component(&engine, &app_component("A", READS_FIRST_BYTE, "")), expected(b'A', 1000));
    assert_eq!(shared.stored(), 1);
    // Another app: its own `$main` (more data, another memory image), the
    // same library in the same place.
    let b = app_component("Bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", READS_FIRST_BYTE, "");
    assert_eq!(run_component(&engine, &b), expected(b'B', 1000));
    assert_eq!(run_component(&engine, &app_component("C", READS_FIRST_BYTE, "")), expected(b'C', 1000));
    assert_eq!(shared.stored(), 1, "the library was compiled again");
    assert_eq!(shared.files().len(), 1, "{:?}", shared.files());
}

#[test]
fn a_module_that_differs_in_one_instruction_or_in_its_place_is_compiled_for_itself() {
    let (engine, shared) = Counting::engine();
    assert_eq!(run_component(&engine, &app_component("A", READS_FIRST_BYTE, "")), expected(b'A', 1000));
    // One constant changed in the library's code: it runs its own code.
    let changed = READS_FIRST_BYTE.replace("1000", "2000");
    assert_eq!(run_component(&engine, &app_component("A", &changed, "")), expected(b'A', 2000));
    assert_eq!(shared.stored(), 2, "the changed library was not compiled");
    // The same library after another module, whose types come first: its
    // place, its calls and its interned type indices all differ.
    let before = r#"(core module $first (type (func (param f64) (result f64 f64)))
                      (func (export "f") (param f64) (result f64 f64) (local.get 0) (local.get 0)))
                    (core instance $first (instantiate $first))"#;
    assert_eq!(run_component(&engine, &app_component("A", READS_FIRST_BYTE, before)), expected(b'A', 1000));
    assert_eq!(shared.stored(), 3, "a module was used in another place");
}

#[test]
fn an_app_that_fails_to_compile_adds_no_shared_module_and_leaves_the_others() {
    let (engine, shared) = Counting::engine();
    assert_eq!(run_component(&engine, &app_component("A", READS_FIRST_BYTE, "")), expected(b'A', 1000));
    // Apps that fail validation in a module of their own: one with the
    // library kept, one with a library never compiled.
    let invalid_main = |lib: &str| {
        app_component("B", lib, "")
            .replace(r#"(core module $main"#, r#"(core module $main (func (result i32) (i64.const 1))"#)
    };
    for lib in [READS_FIRST_BYTE.to_owned(), READS_FIRST_BYTE.replace("1000", "3000")] {
        let err = component(&engine, &invalid_main(&lib)).unwrap_err();
        assert!(format!("{err:?}").contains("type mismatch"), "{err:?}");
    }
    assert_eq!(shared.stored(), 1, "a failed app's library was kept");
    assert_eq!(run_component(&engine, &app_component("C", READS_FIRST_BYTE, "")), expected(b'C', 1000));
    assert_eq!(shared.stored(), 1, "the library was lost");
}

#[test]
fn apps_compiled_at_the_same_time_wait_for_the_shared_module_instead_of_compiling_it() {
    let (engine, shared) = Counting::engine();
    // Eight new apps compiled at once, and no library compiled yet: one
    // compiles it, the others wait and use it. They run one at a time (the
    // pool has three slots).
    let apps: Vec<_> = std::thread::scope(|scope| {
        let compiles: Vec<_> = (0..8u8)
            .map(|i| {
                let engine = &engine;
                scope.spawn(move || {
                    let data = char::from(b'B' + i).to_string();
                    component(engine, &app_component(&data, READS_FIRST_BYTE, "")).unwrap()
                })
            })
            .collect();
        compiles.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(shared.stored(), 1, "an app compiled the library again");
    for (i, app) in (0u8..).zip(&apps) {
        assert_eq!(run(&engine, app), expected(b'B' + i, 1000));
    }
}

#[test]
fn apps_map_one_copy_of_a_shared_module_and_a_lost_one_is_named() {
    let (engine, shared) = Counting::engine();
    let a = component(&engine, &app_component("A", READS_FIRST_BYTE, "")).unwrap();
    let b = component(&engine, &app_component("B", READS_FIRST_BYTE, "")).unwrap();
    assert_eq!((run(&engine, &a), run(&engine, &b)), (expected(b'A', 1000), expected(b'B', 1000)));
    let [library] = &shared.files()[..] else { panic!("{:?}", shared.files()) };
    let size = std::fs::metadata(library).unwrap().len() as usize;
    let mapped: usize = mappings().iter().filter(|m| Path::new(&m.name) == library).map(|m| m.range.len()).sum();
    assert!(mapped > 0 && mapped <= size.next_multiple_of(4096), "{mapped} bytes of {size} mapped");

    // A compiled component names its shared modules; one that is gone
    // leaves it unusable, with the module's name, never another's code.
    let compiled = engine.precompile_component(&wat(&app_component("D", READS_FIRST_BYTE, ""))).unwrap();
    let engine = Engine::new(&config(false, scratch_modules())).unwrap();
    // SAFETY: `compiled` was made by an engine with the same settings.
    let err = unsafe { wasmtime::component::Component::deserialize(&engine, &compiled) }.unwrap_err();
    let name = library.file_stem().unwrap().to_str().unwrap();
    assert!(format!("{err:?}").contains(&format!("shared module {name} is not kept")), "{err:?}");
}
