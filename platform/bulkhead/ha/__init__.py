"""Patroni and etcd: what the database members say, and the operator verbs db status / switchover / failover."""
