"""The local Apache Kafka broker: one KRaft node (broker + controller) on loopback, for development and tests.

The broker's jars are resolved once with Maven from ``deploy/kafka/pom.xml`` (shipped in this package as
``pom.xml``) into a cache outside git (``jars``); ``process.LocalBroker.start`` formats the storage,
renders ``server.properties`` from code (``config``), spawns the JVM in its own session and returns only
once the broker answers a metadata request (``probe``). Its state (pid, addresses) lives in
``<home>/broker/state.json`` (``state``) so ``start``, ``stop`` and ``status`` work across processes.
"""
