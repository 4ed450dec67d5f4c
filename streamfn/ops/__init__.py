"""Operators' verbs over a pipeline file: status, replay, tail and init (``streamfn <verb>``)."""
