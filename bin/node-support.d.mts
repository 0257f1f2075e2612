export declare const SUPPORTED: ReadonlyArray<{ major: number; minor: number }>;
export declare function nodeVersionProblem(version: string): string | undefined;
