// Implementation of pipetrain/schedule/io.h: being written.
