"""Accelerated backends for refquant, one package each, registered under the entry point
group `refquant.backends`. Each mirrors the spec's module layout."""
