"""The local cloud: the same Pulumi program deployed into a moto server on 127.0.0.1."""
