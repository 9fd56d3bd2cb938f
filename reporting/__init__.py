"""Where measured results go and how they are written: JSON + a Markdown table under benchmarks/results/, with the
run's metadata. Shared by the benchmarks and the offline evaluation; imports nothing of the project."""
