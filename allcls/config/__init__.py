"""From the composed Hydra config to what the code below the entry points takes: config sections
as frozen dataclasses (`sections`), the ranges of numbers users set (`ranges`), what Hydra knows
of the running job (`hydra_job`), the resolvers the YAML uses (`resolvers`) and the entry points'
one way of starting (`entry`)."""
