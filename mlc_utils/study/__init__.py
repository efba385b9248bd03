"""The study: parameters, the stage registry, the context a notebook opens, members, and one module per stage."""
