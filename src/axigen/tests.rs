//! Compiler tests: diagnostics, golden Lua, a bounded parser fuzz.

use std::path::Path;

use super::*;

#[test]
fn smoke() {
    let p = Path::new("tests/axigen/basic.axigen");
    match compile_file(p) {
        Ok(c) => println!("{}", translation(&c)),
        Err(d) => panic!(
            "{}",
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}
