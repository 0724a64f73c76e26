import os

# The compiled loss kernel costs a compile step per process; the suite uses the eager closed form,
# and the tests that compare the two ask for the compiled one explicitly.
os.environ.setdefault("RETINANET_FL_LOSS_KERNEL", "eager")
