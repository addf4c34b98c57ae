"""The plugin sandbox's engine: WebAssembly core modules under wasmtime, called one batch at a time
(plugins/ABI.md). `abi` lays batches out in the module's memory and reads the answers back (pure);
`manifest` reads and bounds a plugin's settings; `runtime` compiles, checks and calls modules under fuel,
memory and time limits."""
