//! Fuzz target: `driftwatch::fuzzing::samples` on arbitrary bytes (it must never panic).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = driftwatch::fuzzing::samples(data);
});
