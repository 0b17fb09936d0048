//! Config parsing and validation: any text gives a config or an error naming the problem, never
//! a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = pkraft::config::Config::parse(text, "fuzz") {
            // What a start derives from a valid config must not panic either.
            let _ = config.secrets(|_| None);
        }
    }
});
