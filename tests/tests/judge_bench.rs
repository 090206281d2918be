//! Judge overhead benchmark (run by hand):
//! `cargo test --workspace --test judge_bench -- --ignored --nocapture`

use driftwatch::judge::bench::{measure_overhead, synthetic_samples};
use driftwatch::judge::{JudgeRuntime, PluginSettings};

#[test]
#[ignore = "benchmark; run by hand with --ignored --nocapture"]
fn judge_bench_refusal_overhead() {
    let rt = JudgeRuntime::shared().unwrap();
    let plugin =
        rt.load_file("refusal", &driftwatch_tests::bundled("refusal"), PluginSettings::default(), None).unwrap();
    let samples = synthetic_samples(10_000);
    for batch in [1, 16, 64, 256] {
        let r = measure_overhead(&plugin, &samples, batch, 2_000).unwrap();
        assert_eq!(r.samples, 10_000);
        println!(
            "refusal: {} samples, batch {:>3}: total {:>8.1} ms, {:>6.2} us/sample, {:>9.0} samples/s; one-sample call {:>6.2} us",
            r.samples, r.batch_size, r.total_ms, r.per_sample_us, r.samples_per_second, r.per_call_us
        );
    }
    let good = rt.load_file("good", &driftwatch_tests::hostile("good"), PluginSettings::default(), None).unwrap();
    let r = measure_overhead(&good, &samples[..1000], 64, 5_000).unwrap();
    println!("trivial plugin: one-sample call {:.2} us (host round trip)", r.per_call_us);
}
