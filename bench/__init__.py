"""Benchmarks of dht against its peers (kademlia, opendht). See bench/README.md."""
