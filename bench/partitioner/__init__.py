"""CPU per partition choice: aiokafka's pure-Python murmur2 against the remembered hash."""
