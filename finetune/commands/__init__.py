"""The commands that are not fine-tuning methods: the CLI and its launcher, `collect`, `eval`,
`export`, `steerability` and videos. Each method lives in its own folder beside this one."""
