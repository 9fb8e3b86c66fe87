"""The pure core: value types, the planner, the safety rules, schedule payloads, key names,
fire times and settings. No network, no database, no files, no clock: everything else
builds on these values and functions."""
