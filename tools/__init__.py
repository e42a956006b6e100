"""The repository's development tools, outside the installed library: the oracles (the real
implementations the spec is tested against), the real-model fixtures (`tools.models`, which
fetches them with pip) and the demo. `refquant` never imports them."""
