//! Compiles the shop's own migrations (`migrations/*.sql`) into the library, so
//! `shop::migrate::MigrationSet::embedded()` needs no files at run time: tarn's `demo` command
//! applies them in process. File names are checked at run time by the same parser that reads
//! a directory, so a bad name fails `shop migrate` with the file named.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    // Read at run time, not baked in with `env!`: a build script compiled for one checkout is
    // reused by cargo for another checkout sharing the target directory.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo");
    let dir = Path::new(&manifest_dir).join("migrations");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("examples/shop/migrations exists")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".sql"))
        .collect();
    names.sort();
    let mut code = String::from("&[\n");
    for name in &names {
        let path = dir.join(name);
        writeln!(
            code,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    code.push_str("]\n");
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("embedded_migrations.rs");
    std::fs::write(out, code).expect("write embedded_migrations.rs");
}
