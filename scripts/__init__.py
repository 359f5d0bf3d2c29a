"""Scripts of the project that tests and benchmarks also import (`from scripts import postgres`)."""
