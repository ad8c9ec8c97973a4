# The managed plugin's root filesystem. scripts/build-plugin builds the same
# tree without Docker Hub (debootstrap + the wheels this repo pins); with a
# registry at hand: docker build -t pyoverlay-rootfs . && docker create ... | docker export
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-nftables \
      python3-cryptography iproute2 nftables ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY . /src
RUN python3 -m venv --system-site-packages /opt/pyoverlay \
 && /opt/pyoverlay/bin/pip install --no-cache-dir /src \
 && rm -rf /src
# what the plugin never runs (scripts/build-plugin's slim() removes more)
RUN /opt/pyoverlay/bin/pip uninstall -y -q pip setuptools \
 && rm -rf /usr/share/man /usr/share/locale /usr/share/python-wheels \
 && find /usr/share/doc -type f ! -name copyright -delete
RUN mkdir -p /run/docker/plugins /var/lib/pyoverlay /run/netns
ENTRYPOINT ["/opt/pyoverlay/bin/pyoverlay", "plugin"]
