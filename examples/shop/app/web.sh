#!/bin/sh
# HTTP on 8080 (static files and /cgi-bin/info), an echo service on 7000 (shows a PROXY v2
# header when the route sends one), and TLS on 8443 with the app's own certificate.
echo "release=$SCALEBOX_RELEASE instance=$SCALEBOX_INSTANCE process=$SCALEBOX_PROCESS" > /tmp/info
httpd -p 8080 -h /app/www
nc -ll -p 7000 -e /bin/cat &
echo "web: listening on 8080 (http), 7000 (echo), 8443 (tls)"
exec openssl s_server -quiet -accept 8443 -cert /app/tls/cert.pem -key /app/tls/key.pem -www
