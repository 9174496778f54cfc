"""The AR block loop (inference only): settings, sampler, schedule, blank prefix, prompt switching."""
