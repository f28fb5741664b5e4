package pam

import "syscall"

func syscallErr(n int) error { return syscall.Errno(n) }
