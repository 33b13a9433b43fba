//! Arbitrary text as the JSONC cluster config file: `config::cluster::parse` must answer Ok or
//! one error of one line naming a key, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use netsy::config::cluster;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match cluster::parse(text) {
        Ok((cfg, _warnings)) => {
            // What parse accepted is valid.
            assert!(cfg.validate().is_ok());
        }
        Err(e) => {
            let line = e.to_string();
            assert!(!line.contains('\n'), "multi-line error: {line:?}");
            assert!(!e.key.is_empty(), "error without a key: {line:?}");
        }
    }
});
