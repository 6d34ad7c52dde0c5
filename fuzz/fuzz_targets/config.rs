//! Any text as a config file gives flags or an error naming the file and a line: never a
//! panic, never an error that does not say where.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let typed = ["wsedge".to_owned(), "serve".to_owned()];
    match wsedge::config::config_text_args(text, "fuzz.toml", &typed) {
        Ok(flags) => assert!(flags.iter().all(|f| !f.contains('\0') || !f.starts_with("--"))),
        Err(error) => {
            let line = error
                .strip_prefix("fuzz.toml:")
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse::<usize>().ok());
            assert!(line.is_some(), "an error that names no line: {error}");
        }
    }
});
