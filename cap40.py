import socket, time, urllib.request
held = [socket.create_connection(("127.0.0.1", 30500)) for _ in range(40)]
time.sleep(0.5)
m = urllib.request.urlopen("http://127.0.0.1:30501/metrics").read().decode()
print([l for l in m.splitlines() if l.startswith("hydrus_downstream_connections")])
alive = 0
for s in held:
    s.setblocking(False)
    try:
        d = s.recv(1)
    except BlockingIOError: alive += 1
    except Exception: pass
print("of 40 idle connections (cap 20) still open:", alive)
