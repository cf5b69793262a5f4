"""The tools wing: what people run beside training. Pre-tokenizing (`prepare`), replaying a step
(`inspect`), what the notebooks measure (`explore`, `grouping`, `resuming`) and their executed
copies (`render`, on a kernel of this interpreter: `kernel`), the benchmarks and the GPU check,
figures, the reference script's pipeline (for comparison) and a local HTTP Range server."""
