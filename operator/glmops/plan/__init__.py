"""Pure planning: spec + settings -> Kubernetes objects, trainer config and memory plan. No I/O here."""
