"""The harness (run from the checkout, never installed): Docker hosts on one machine for
the demo, the integration tests and the benchmarks.

    hosts.py            Lab and Host: netns + mount ns + dockerd + plugin per host
    docker_verbs.py     the Docker verbs lab hosts and VMs share (networks, swarm)
    vms.py              the Vagrant VMs as hosts (the VM tier)
    registry.py         a TLS plugin registry (docker-registry) the lab's hosts trust; one
                        release per run served to every lab; the VM tier's registry
    publish.py          a plugin directory pushed to a registry without a dockerd
    demo.py             `scripts/demo`: the seed's application across hosts
    measure.py          iperf, RSS, CPU, a CPU hog, paths to servers side by side
    bench.py            `scripts/bench`: every benchmark, side by side with its reference
    bench_footprint.py  idle RSS and CPU (the lab's plugin and the managed one), imports
    bench_install.py    the plugin pushed, then installed from a registry: size and time
    bench_ipsec.py      encrypted vs plain vs Docker's encrypted overlay (in the VM)
    bench_keeper.py     the IPsec keeper at 100 encrypted peers (simulated xfrm)
    bench_mesh.py       a published port through another node vs straight to the task
                        (in the IPsec VM: beside Docker's IPVS mesh, and encrypted)
    bench_scope.py      per-network replication vs everything everywhere (simulated)
    bench_tables.py     5,000 remote endpoints programmed, reconciled
    bench_vips.py       VIP rules at 100 and 1,000 services
    reach.py            when a new container's entry reached the other hosts' kernels
    readme_table.py     README's benchmark table, written by `scripts/bench --readme`
"""
