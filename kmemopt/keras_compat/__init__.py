"""The only code in kmemopt that imports `keras.src` or patches Keras.

Each module offers named operations, each naming the Keras internals it relies on; `contracts` lists
every private symbol with the signature kmemopt expects, checks them before use, and, when one does not
hold (a Keras outside `contracts.KERAS_TESTED`), makes the operation take Keras's public path with a
one-line `KerasCompatWarning`. Importing this package imports no Keras.

- `variables`: build unallocated, assign from a file buffer, allocate the rest, free a variable;
- `saving`: load a checked `.keras` with its weights read in place, load a checked file by its format,
  deserialize a config, rebuild Sequentials linearly, write a `.keras` zip with the weights through disk;
- `quantize`: Keras's int8 quantization computed slice by slice;
- `layers`: flatten a model's layers, walk a functional graph, input structures;
- `registry`: Keras's registered objects, symbol lookup, Keras's own classes for the allowlist;
- `optimizer`: optimizer slots built on unallocated variables.
"""
