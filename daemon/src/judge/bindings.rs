//! Host bindings generated from the WIT contract in `sdk/wit/`.

wasmtime::component::bindgen!({
    world: "judge-plugin",
    path: "../sdk/wit",
});
