//! docs/events.md stays exact: every JSON example in it is a valid event record whose type and
//! payload the code's `EventKind` accepts, and every event type has an example.

use driftwatch::events::EventKind;
use driftwatch::store::Event;

#[test]
fn every_event_example_in_the_docs_matches_the_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut covered = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("```json\n") {
        let after = &rest[start + 8..];
        let end = after.find("```").expect("closed code block");
        let block = &after[..end];
        rest = &after[end + 3..];
        let record: Event = serde_json::from_str(block).unwrap_or_else(|e| panic!("{e} in\n{block}"));
        let kind: EventKind =
            serde_json::from_value(serde_json::json!({"type": record.event_type, "payload": record.payload}))
                .unwrap_or_else(|e| panic!("{e}: payload does not match EventKind in\n{block}"));
        assert_eq!(kind.type_name(), record.event_type);
        // Nothing in the example that EventKind would drop.
        assert_eq!(kind.payload(), record.payload, "extra or missing fields in\n{block}");
        covered.push(record.event_type);
    }
    for t in EventKind::TYPES {
        assert!(covered.iter().any(|c| c == t), "docs/events.md has no example of {t}");
    }
}
