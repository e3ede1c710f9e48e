#!/usr/bin/env bash
# Builds the example app into an OCI image archive, without Docker: busybox (Debian's
# busybox-static), openssl and its libraries from this machine, the app's scripts, and a
# self-signed TLS certificate for HOSTNAME. Prints the image's manifest digest (the release
# pins it) and writes it next to the archive as OUT.digest.
#
#   examples/shop/build.sh OUT.tar [HOSTNAME]
set -euo pipefail
out=${1:?usage: build.sh OUT.tar [HOSTNAME]}
host=${2:-shop.example.test}
here=$(cd "$(dirname "$0")" && pwd)
for tool in busybox openssl python3 ldd; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install busybox-static openssl python3)" >&2; exit 1; }
done
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,etc,tmp,usr/bin,usr/lib/ssl,run/secrets,app/tls}
chmod 1777 "$root/tmp"
cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh cat echo sleep httpd nc date env ls stty; do ln -s busybox "$root/bin/$a"; done
cp /usr/bin/openssl "$root/usr/bin/openssl"
ln -s ../usr/bin/openssl "$root/bin/openssl"
# The dynamic libraries openssl needs, at the paths the loader looks them up.
ldd /usr/bin/openssl | awk '/=>/ {print $3} /^[ \t]*\// {print $1}' | while read -r lib; do
  [ -n "$lib" ] && [ -e "$lib" ] || continue
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp -L /usr/lib/ssl/openssl.cnf "$root/usr/lib/ssl/openssl.cnf"
cp -r "$here/app/." "$root/app/"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$host" \
  -addext "subjectAltName=DNS:$host" \
  -keyout "$root/app/tls/key.pem" -out "$root/app/tls/cert.pem" 2>/dev/null
cp "$root/app/tls/cert.pem" "$out.cert.pem"

python3 - "$root" "$out" <<'PY'
# Writes an OCI image layout (one gzip layer) as a tar archive and prints the manifest digest.
import gzip, hashlib, io, json, os, sys, tarfile
root, out = sys.argv[1], sys.argv[2]
blobs = {}
def blob(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[d] = data
    return d, len(data)
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            info = t.gettarinfo(full, arcname=os.path.relpath(full, root))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isreg():
                with open(full, "rb") as f:
                    t.addfile(info, f)
            else:
                t.addfile(info)
diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
layer, layer_size = blob(gzip.compress(raw.getvalue(), mtime=0))
config = {
    "architecture": "amd64", "os": "linux",
    "config": {"Cmd": ["/bin/sh", "/app/web.sh"], "WorkingDir": "/app",
               "Env": ["PATH=/usr/bin:/bin"]},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
}
cfg, cfg_size = blob(json.dumps(config, sort_keys=True).encode())
manifest = {
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": layer_size}],
}
man, man_size = blob(json.dumps(manifest, sort_keys=True).encode())
index = {"schemaVersion": 2, "manifests": [{
    "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man, "size": man_size,
    "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
tmp = out + ".tmp"
with tarfile.open(tmp, "w") as t:
    def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
    add("index.json", json.dumps(index).encode())
    for d, data in blobs.items():
        add("blobs/sha256/" + d.split(":")[1], data)
os.replace(tmp, out)
with open(out + ".digest", "w") as f:
    f.write(man + "\n")
print(man)
PY
