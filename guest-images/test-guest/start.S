/*
 * cpushare test guest: entry, long mode, and the drop to ring 3.
 *
 * Two entries:
 *  - _start32: the PVH entry (XEN_ELFNOTE_PHYS32_ENTRY), 32-bit protected
 *    mode, paging off, %ebx = physical address of the hvm_start_info
 *    (xen/include/public/arch-x86/hvm/start_info.h), as QEMU, Firecracker
 *    and cpushare-vmm enter PVH kernels.
 *  - _start64 (ELF e_entry, and offset 0x200 of the image so that the
 *    bzImage that build.sh wraps around it has Linux's startup_64 there):
 *    the Linux 64-bit boot protocol, long mode with identity paging,
 *    %rsi = boot_params.
 * Ring-0 work is kept to a few dozen instructions: page tables and GDT are
 * built by the assembler, not at run time, because ring 0 is interpreted
 * (~360 ns/instruction) under PVM.
 */
	.set MSR_EFER, 0xc0000080
	.set SEL_KCODE, 0x08
	.set SEL_KDATA, 0x10
	.set SEL_UCODE, 0x18 | 3
	.set SEL_UDATA, 0x20 | 3
	.set SEL_TSS, 0x28
	.set RFLAGS_USER, 0x3002	/* IOPL=3, reserved bit 1, IF=0 */

	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* name size: "Xen\0" */
	.long 4			/* desc size */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long _start32
	.balign 4

	.section .text.entry, "ax"
	.code32
	.globl _start32
_start32:
	xorl %esi, %esi			/* no boot_params on this path */
	movl $pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $0x20, %eax			/* CR4.PAE */
	movl %eax, %cr4
	movl $MSR_EFER, %ecx
	rdmsr
	orl $0x100, %eax		/* EFER.LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* CR0.PG | CR0.PE */
	movl %eax, %cr0
	lgdt gdt_ptr
	ljmp $SEL_KCODE, $_start64

	.code64
	.org 0x200
	.globl _start64
_start64:
	movl $pml4, %eax		/* our own map: user-accessible, 4 GiB */
	movq %rax, %cr3
	movl $kernel_stack_top, %esp
	lgdt gdt_ptr
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	/* TSS base into its descriptor; the assembler cannot split a relocation. */
	movl $tss, %eax
	movw %ax, gdt_tss + 2
	shrl $16, %eax
	movb %al, gdt_tss + 4
	movb %ah, gdt_tss + 7
	movl $SEL_TSS, %eax
	ltr %ax
	/* iretq frame: SS, RSP, RFLAGS, CS, RIP. */
	pushq $SEL_UDATA
	pushq $user_stack_top
	pushq $RFLAGS_USER
	pushq $SEL_UCODE
	pushq $user_main
	movl %ebx, %edi			/* user_main(start_info, boot_params) */
	iretq

	/* Application processors: woken by INIT-SIPI-SIPI from the boot CPU,
	 * they start in real mode in the copy of ap_tramp at AP_TRAMP_ADDR,
	 * switch straight to long mode with the boot CPU's page tables and
	 * GDT, take a stack by APIC id, and drop to ring 3 in ap_main(id). */
	.globl ap_long64
ap_long64:
	movl $SEL_KDATA, %eax
	movl %eax, %ds
	movl %eax, %es
	movl %eax, %ss
	movl $1, %eax
	cpuid
	shrl $24, %ebx			/* initial APIC id */
	movl %ebx, %eax
	shll $12, %eax
	leaq ap_kstacks + 4096(%rax), %rsp
	movl %ebx, %eax
	shll $14, %eax
	leaq ap_ustacks + 16384(%rax), %rcx
	pushq $SEL_UDATA
	pushq %rcx
	pushq $RFLAGS_USER
	pushq $SEL_UCODE
	pushq $ap_main
	movl %ebx, %edi
	iretq

	.set AP_TRAMP_ADDR, 0x8000
	.section .rodata
	.code16
	.globl ap_tramp_start, ap_tramp_end
ap_tramp_start:
	cli
	xorw %ax, %ax
	movw %ax, %ds
	lgdtl AP_TRAMP_ADDR + (ap_tramp_gdt_ptr - ap_tramp_start)
	movl $pml4, %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $MSR_EFER, %ecx
	rdmsr
	orl $0x100, %eax		/* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000001, %eax		/* PG | PE together: real to long mode */
	movl %eax, %cr0
	ljmpl $SEL_KCODE, $ap_long64
	.balign 4
ap_tramp_gdt_ptr:
	.word gdt_end - gdt - 1
	.long gdt
ap_tramp_end:
	.code64

	.section .data.tables, "aw"
	.balign 16
gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08 kernel code, 64-bit */
	.quad 0x00cf92000000ffff	/* 0x10 kernel data */
	.quad 0x00affa000000ffff	/* 0x18 user code, 64-bit, DPL 3 */
	.quad 0x00cff2000000ffff	/* 0x20 user data, DPL 3 */
gdt_tss:
	.quad 0x0000890000002068	/* 0x28 TSS, limit 0x2068, base patched */
	.quad 0
gdt_end:
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

	.balign 16
tss:
	.long 0
	.quad kernel_stack_top		/* rsp0 */
	.fill 0x66 - 12, 1, 0
	.word 0x68			/* I/O permission bitmap offset */
	/* All ports allowed from ring 3. IOPL=3 alone suffices on hardware,
	 * but PVM runs ring 3 with the real IOPL 0 and checks this bitmap. */
	.fill 8192, 1, 0
	.byte 0xff

	/* Identity map of the first 4 GiB with 2 MiB pages, user-accessible
	 * (ring 3 drives the virtio BAR and the LAPIC directly). */
	.balign 4096
pml4:
	.quad pdpt + 0x7
	.fill 511, 8, 0
pdpt:
	.quad pd + 0x7
	.quad pd + 0x1000 + 0x7
	.quad pd + 0x2000 + 0x7
	.quad pd + 0x3000 + 0x7
	.fill 508, 8, 0
pd:
	.set i, 0
	.rept 2048
	.quad (i << 21) | 0x87		/* present, writable, user, 2 MiB */
	.set i, i + 1
	.endr

	.section .bss
	.balign 16
	.space 4096
kernel_stack_top:
	.space 65536
	.globl user_stack_top
user_stack_top:
	.balign 4096
ap_kstacks:
	.space 4096 * 32
ap_ustacks:
	.space 16384 * 32
