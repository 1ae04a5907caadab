"""Hosts: the local cloud's instances as real sandbox hosts, configured by the Ansible roles."""
