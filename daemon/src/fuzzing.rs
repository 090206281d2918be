//! Entry points for the fuzz targets in `tests/fuzz/` and for the replay of their corpus in the tests:
//! each takes arbitrary bytes and runs one parser that outside input reaches — the GGUF reader,
//! the config parser, the suite parsers, the sample JSONL of `driftwatch judge`, and the API's
//! event-stream query and `Last-Event-ID`. Each returns whether the input was accepted; a bad
//! input must come back as an error, never as a panic, a hang or an unbounded allocation.

use std::io::Cursor;
use std::path::Path;

use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, Uri};

use crate::api::routes;
use crate::config::{Config, SuiteConfig, SuiteFormat};

/// A fuzz target: whether the input was accepted.
pub type Target = fn(&[u8]) -> bool;

/// The fuzz targets, by name (the `tests/fuzz/fuzz_targets/*.rs` files and the
/// `tests/fuzz/corpus/*` folders).
pub const TARGETS: &[(&str, Target)] =
    &[("gguf", gguf), ("config", config), ("suite", suite), ("samples", samples), ("stream_query", stream_query)];

/// The GGUF header, metadata and tensor-table reader, on a file of these bytes.
pub fn gguf(data: &[u8]) -> bool {
    crate::gguf::inspect_reader(Cursor::new(data), data.len() as u64).is_ok()
}

/// The whole config path of a file's text: TOML parsing, environment overrides (none but a
/// `HOME`, where the default model's cache would be), path resolution against a folder that
/// does not exist, and validation.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else { return false };
    let env = |key: &str| (key == "HOME").then(|| "/nonexistent/home".to_owned());
    Config::from_toml_str(text, "fuzz.toml", Path::new("/nonexistent/driftwatch-fuzz"), &env).is_ok()
}

/// The suite parsers: the first byte picks txt, jsonl or csv (and whether id and category
/// fields are configured); the rest is the file's text.
pub fn suite(data: &[u8]) -> bool {
    let Some((&selector, rest)) = data.split_first() else { return false };
    let Ok(text) = std::str::from_utf8(rest) else { return false };
    let format = match selector % 3 {
        0 => SuiteFormat::Txt,
        1 => SuiteFormat::Jsonl,
        _ => SuiteFormat::Csv,
    };
    let mut cfg = SuiteConfig::new("fuzz", "fuzz");
    if selector & 0x10 != 0 {
        cfg.id_field = Some("id".into());
    }
    if selector & 0x20 != 0 {
        cfg.category_field = Some("category".into());
    }
    crate::suite::parse_records(text, format, &cfg).is_ok()
}

/// The JSON Lines samples `driftwatch judge` reads.
pub fn samples(data: &[u8]) -> bool {
    crate::judge::cli::parse_samples(Cursor::new(data), Path::new("fuzz.jsonl")).is_ok()
}

/// The event streams' request: the bytes up to the first newline are the query string of
/// `/v1/events`, the rest the `Last-Event-ID` header, parsed as the server does (inputs the
/// HTTP layer itself would refuse — an invalid URI or header value — are skipped). The sample
/// pages' `offset` and `limit` are read from the same query.
pub fn stream_query(data: &[u8]) -> bool {
    let (query, header) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(query) = std::str::from_utf8(query) else { return false };
    let Ok(uri) = format!("/v1/events?{query}").parse::<Uri>() else { return false };
    let mut headers = HeaderMap::new();
    if let Some(h) = header {
        let Ok(value) = HeaderValue::from_bytes(h) else { return false };
        headers.insert("last-event-id", value);
    }
    let Ok(params) = routes::params(Query::try_from_uri(&uri)) else { return false };
    let paging =
        routes::usize_param(&params, "offset", 0).is_ok() && routes::usize_param(&params, "limit", 100).is_ok();
    routes::stream_params(&headers, &params).is_ok() && paging
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fuzz/corpus").join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        // A running campaign may remove an input it has just reduced.
        files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
    }

    /// Every kept corpus input (what the cargo fuzz campaigns found, see scripts/fuzz.sh), and
    /// a few thousand seeded byte mutations of them, through each target: no panic. The
    /// coverage-guided runs are `scripts/fuzz.sh`; this replays their findings in every test
    /// run, without libFuzzer.
    #[test]
    fn every_corpus_input_and_its_mutations_are_handled_without_a_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
        for (name, target) in TARGETS {
            let inputs = corpus(name);
            assert!(inputs.len() >= 3, "the {name} corpus has {} inputs", inputs.len());
            let accepted = inputs.iter().filter(|i| target(i)).count();
            for _ in 0..3000 {
                let mut input = inputs[rng.random_range(0..inputs.len())].clone();
                for _ in 0..rng.random_range(1..8) {
                    let at = rng.random_range(0..=input.len());
                    match rng.random_range(0..4) {
                        0 if at < input.len() => input[at] = rng.random(),
                        1 if at < input.len() => {
                            input.remove(at);
                        }
                        2 => input.insert(at, rng.random()),
                        _ => input.truncate(at),
                    }
                }
                let _ = target(&input);
            }
            assert!(accepted > 0, "no {name} corpus input is accepted: the target cannot reach past the first check");
        }
    }

    #[test]
    fn each_target_accepts_a_good_input_and_refuses_a_bad_one() {
        assert!(suite(b"\x00first prompt\nsecond prompt\n"));
        assert!(suite(b"\x01{\"prompt\": \"hi\"}\n"));
        assert!(!suite(b"\x01{\"prompt\": 3.5e999\n"));
        assert!(suite(b"\x02prompt,x\nhello,1\n"));
        assert!(!suite(b"\x02nope\nhello\n"));
        assert!(samples(b"{\"prompt\": \"p\", \"response\": \"r\"}\n\n"));
        assert!(!samples(b"{\"prompt\": \"p\"}\n"));
        assert!(stream_query(b"since=4&types=run.*\n7"));
        assert!(!stream_query(b"since=-1"));
        assert!(!stream_query(b"\n12x"));
        assert!(!gguf(b"GGUF\x03\x00\x00\x00"));
        assert!(!config(b"[engine\n"));
    }
}
