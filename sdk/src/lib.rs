//! driftwatch-sdk: what a judge author uses.
